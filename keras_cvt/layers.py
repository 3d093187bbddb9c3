"""The building blocks of CvT, written with `keras.ops` so every backend runs them.

Feature maps are NHWC throughout. Inside a transformer block the map is flattened to
row-major tokens, which is the order the original NCHW `rearrange(x, 'b c h w -> b (h w) c')`
produces, so weights and activations line up with the PyTorch model element for element.
"""

import keras
from keras import layers, ops

# The original uses PyTorch's defaults for LayerNorm/BatchNorm (eps 1e-5) everywhere;
# Keras' default of 1e-3 visibly changes the logits.
NORM_EPSILON = 1e-5
# PyTorch's BatchNorm momentum 0.1 weighs the new batch; Keras' momentum weighs the old value.
BATCH_NORM_MOMENTUM = 0.9


def _dense_initializer():
    return keras.initializers.TruncatedNormal(stddev=0.02)


# QuickGELU(x) = x * sigmoid(1.702 x) = silu(1.702 x) / 1.702.
QUICK_GELU_FACTOR = 1.702


def quick_gelu(x):
    """The MLP activation the checkpoints were trained with (not exact GELU)."""
    return x * ops.sigmoid(QUICK_GELU_FACTOR * x)


def symmetric_pad(x, padding):
    """Zero-pads height and width by `padding` on both sides, as PyTorch's Conv2d does.

    Keras' `padding="same"` puts the extra row/column at the bottom/right only for strided
    convolutions, which shifts every window by one pixel against the original.
    """
    if padding == 0:
        return x
    return ops.pad(x, [[0, 0], [padding, padding], [padding, padding], [0, 0]])


@keras.saving.register_keras_serializable(package="keras_cvt")
class LayerNorm(layers.LayerNormalization):
    """Keras' `LayerNormalization` over the last axis (same weights, config and outputs, to
    float32 rounding) in a form TensorFlow runs about 1.4x faster on CPU.

    Keras multiplies the tokens by a `(..., 1)` per-token factor, a broadcast along the
    innermost axis that TensorFlow's elementwise kernels handle slowly. Here the factor is
    first multiplied by gamma, so the large multiply is between two tensors of one shape.
    Statistics are computed in float32 at least, as in Keras.

    Args:
        epsilon: added to the variance (PyTorch's 1e-5 by default, as in the original).
        **kwargs: the other `keras.layers.LayerNormalization` arguments; `axis` must be -1,
            and `center` and `scale` True.
    """

    def __init__(self, epsilon=NORM_EPSILON, **kwargs):
        super().__init__(epsilon=epsilon, **kwargs)
        if self.axis not in (-1, [-1]) or not (self.center and self.scale) or self.rms_scaling:
            raise ValueError(
                "`LayerNorm` normalizes the last axis with gamma and beta: it needs axis=-1, "
                f"center=True, scale=True, got axis={self.axis!r}, center={self.center!r}, "
                f"scale={self.scale!r}, rms_scaling={self.rms_scaling!r}"
            )

    def call(self, inputs):
        dtype = keras.backend.result_type(inputs.dtype, "float32")
        x = ops.cast(inputs, dtype)
        centered = x - ops.mean(x, axis=-1, keepdims=True)
        variance = ops.mean(ops.square(centered), axis=-1, keepdims=True)
        scale = ops.rsqrt(variance + self.epsilon) * ops.cast(self.gamma, dtype)
        return ops.cast(centered * scale + ops.cast(self.beta, dtype), self.compute_dtype)


@keras.saving.register_keras_serializable(package="keras_cvt")
class StochasticDepth(layers.Layer):
    """Drops the whole residual branch per sample while training (DropPath).

    Args:
        rate: probability of dropping the branch of a sample; surviving branches are
            scaled by `1 / (1 - rate)`.
        seed: optional seed for the random draws.
    """

    def __init__(self, rate=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"`rate` must be in [0, 1), got rate={rate!r}")
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=False):
        if not training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
        mask = ops.floor(keep + keras.random.uniform(shape, seed=self.seed_generator, dtype=x.dtype))
        return x / keep * mask

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


@keras.saving.register_keras_serializable(package="keras_cvt")
class ConvEmbedding(layers.Layer):
    """Convolutional token embedding: an overlapping strided convolution, then LayerNorm.

    Args:
        embed_dim: number of output channels.
        kernel_size: convolution kernel size.
        strides: convolution stride (the stage's down-sampling factor).
        padding: zero padding added symmetrically to height and width.
    """

    def __init__(self, embed_dim, kernel_size, strides, padding, **kwargs):
        super().__init__(**kwargs)
        self.embed_dim = embed_dim
        self.kernel_size = kernel_size
        self.strides = strides
        self.padding = padding
        self.proj = layers.Conv2D(
            embed_dim,
            kernel_size,
            strides=strides,
            data_format="channels_last",
            name="proj",
            dtype=self.dtype_policy,
        )
        self.norm = LayerNorm(name="norm", dtype=self.dtype_policy)

    def build(self, input_shape):
        padded = list(input_shape)
        for axis in (1, 2):
            if padded[axis] is not None:
                padded[axis] += 2 * self.padding
        self.proj.build(tuple(padded))
        self.norm.build(self.proj.compute_output_shape(tuple(padded)))

    def call(self, x):
        self._check_size(x.shape)
        return self.norm(self.proj(symmetric_pad(x, self.padding)))

    def _check_size(self, shape):
        """Refuses a map too small for the kernel, where its size is known when the layer is
        called (eagerly, and when a function is traced for concrete shapes, as `predict` and
        JAX do): the backends' own errors come from deep inside the convolution."""
        for axis, axis_name in ((1, "height"), (2, "width")):
            size = shape[axis]
            if size is not None and conv_output_size(size, self.kernel_size, self.strides, self.padding) < 1:
                raise ValueError(
                    f"The input of `{self.name}` has {axis_name} {size}, too small for its "
                    f"{self.kernel_size}x{self.kernel_size} kernel with padding {self.padding}: it "
                    f"needs at least {self.kernel_size - 2 * self.padding}. The image is too small "
                    "for this model."
                )

    def compute_output_shape(self, input_shape):
        batch, height, width, _ = input_shape
        return (
            batch,
            conv_output_size(height, self.kernel_size, self.strides, self.padding),
            conv_output_size(width, self.kernel_size, self.strides, self.padding),
            self.embed_dim,
        )

    def get_config(self):
        return {
            **super().get_config(),
            "embed_dim": self.embed_dim,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "padding": self.padding,
        }


def conv_output_size(size, kernel_size, strides, padding):
    """Spatial size after a convolution with symmetric padding; None stays None."""
    if size is None:
        return None
    return (size + 2 * padding - kernel_size) // strides + 1


@keras.saving.register_keras_serializable(package="keras_cvt")
class HeadProjection(layers.Layer):
    """A Linear layer whose output comes out split into attention heads, heads first.

    Maps tokens `(batch, tokens, input_dim)` to `(num_heads, batch, tokens, head_dim)` with
    one matmul of the flattened tokens against a `(num_heads, input_dim, head_dim)` kernel.
    Heads and batch are then the leading (batch) dimensions of the attention matmuls, so the
    transpose that splitting a Dense layer's output into heads needs is saved: it costs more
    than the matmul at small batches. (Heads first rather than batch first: TensorFlow's
    oneDNN kernel crashes on a `(batch, 1, tokens, input_dim)` broadcast against the kernel.)

    Args:
        num_heads: number of heads.
        head_dim: width of each head.
        use_bias: whether a `(num_heads, 1, head_dim)` bias is added.
    """

    def __init__(self, num_heads, head_dim, use_bias=True, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.use_bias = use_bias

    def build(self, input_shape):
        self.kernel = self.add_weight(
            shape=(self.num_heads, input_shape[-1], self.head_dim),
            initializer=_dense_initializer(),
            name="kernel",
        )
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(
                shape=(self.num_heads, 1, self.head_dim), initializer="zeros", name="bias"
            )

    def call(self, x):
        batch = ops.shape(x)[0]
        tokens = ops.reshape(x, (-1, ops.shape(x)[-1]))
        y = ops.matmul(tokens, ops.cast(self.kernel, self.compute_dtype))
        if self.use_bias:
            y = y + ops.cast(self.bias, self.compute_dtype)
        return ops.reshape(y, (self.num_heads, batch, -1, self.head_dim))

    def compute_output_shape(self, input_shape):
        return (self.num_heads, input_shape[0], input_shape[1], self.head_dim)

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "head_dim": self.head_dim,
            "use_bias": self.use_bias,
        }


@keras.saving.register_keras_serializable(package="keras_cvt")
class ConvAttention(layers.Layer):
    """Multi-head attention with convolutional projections (the original's `dw_bn`).

    Queries, keys and values are taken from the token map by a depthwise convolution and
    BatchNorm each (keys and values with a stride, which shrinks the attention matrix), then
    a Linear layer. A class token, when present, bypasses the convolutions and is prepended
    to each of q, k and v before their Linear layers.

    Call with tokens `(batch, cls + height * width, dim)` and the map's `height`, `width`.

    Args:
        dim: token width.
        num_heads: number of attention heads; must divide `dim`.
        with_cls_token: whether the first token is a class token.
        kernel_size: depthwise kernel size of the projections.
        q_stride: stride of the query projection.
        kv_stride: stride of the key and value projections.
        padding: symmetric zero padding of the projections.
        qkv_bias: whether the q/k/v Linear layers have a bias.
        folded: the inference form that `keras_cvt.optimize_for_inference` builds: each
            BatchNorm folded into its depthwise convolution (which gets a bias), the
            attention scale folded into the query projection's weights, and k and v
            projected straight into heads (`HeadProjection`, heads first like q), with no
            key bias (it adds one constant to each row of scores, which softmax ignores) and
            the value bias folded into `proj`'s bias (each row of attention weights sums to
            1, so it passes through unchanged); strided convolutions take a kernel one larger
            with "same" padding instead of a padded copy of the map.
    """

    def __init__(
        self,
        dim,
        num_heads,
        with_cls_token=False,
        kernel_size=3,
        q_stride=1,
        kv_stride=2,
        padding=1,
        qkv_bias=True,
        folded=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if dim % num_heads:
            raise ValueError(f"`num_heads` must divide `dim`, got dim={dim}, num_heads={num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.with_cls_token = with_cls_token
        self.kernel_size = kernel_size
        self.q_stride = q_stride
        self.kv_stride = kv_stride
        self.padding = padding
        self.qkv_bias = qkv_bias
        self.folded = folded
        # The original scales by the full width, not the head width.
        self.scale = dim**-0.5
        for part, stride in (("q", q_stride), ("k", kv_stride), ("v", kv_stride)):
            same_kernel_size = self._same_kernel_size(stride)
            setattr(self, f"conv_proj_{part}", layers.DepthwiseConv2D(
                same_kernel_size or kernel_size,
                strides=stride,
                padding="same" if same_kernel_size else "valid",
                use_bias=folded,
                data_format="channels_last",
                name=f"conv_proj_{part}",
                dtype=self.dtype_policy,
            ))
            if not folded:
                setattr(self, f"conv_proj_{part}_bn", layers.BatchNormalization(
                    momentum=BATCH_NORM_MOMENTUM,
                    epsilon=NORM_EPSILON,
                    name=f"conv_proj_{part}_bn",
                    dtype=self.dtype_policy,
                ))
            if folded and part != "q":
                projection = HeadProjection(
                    num_heads,
                    dim // num_heads,
                    use_bias=False,
                    name=f"proj_{part}",
                    dtype=self.dtype_policy,
                )
            else:
                projection = layers.Dense(
                    dim,
                    use_bias=qkv_bias,
                    kernel_initializer=_dense_initializer(),
                    name=f"proj_{part}",
                    dtype=self.dtype_policy,
                )
            setattr(self, f"proj_{part}", projection)
        self.proj = layers.Dense(
            dim, kernel_initializer=_dense_initializer(), name="proj", dtype=self.dtype_policy
        )

    def build(self, input_shape):
        map_shape = (None, None, None, self.dim)
        for part in "qkv":
            getattr(self, f"conv_proj_{part}").build(map_shape)
            if not self.folded:
                getattr(self, f"conv_proj_{part}_bn").build(map_shape)
            getattr(self, f"proj_{part}").build(input_shape)
        self.proj.build(input_shape)

    def _same_kernel_size(self, stride):
        """The kernel size of a convolution with "same" padding that computes this projection
        without a padded copy of the map, or None (then the map is padded and convolved
        "valid"). Unstrided, "same" pads (kernel - 1) / 2 on each side: the symmetric padding
        itself. At stride 2 it puts an odd total's extra row and column last; for a kernel one
        larger it pads `padding` first, and the kernel's last row and column, zero, reach
        none of what it pads last. Only the folded form, whose kernels
        `optimize_for_inference` computes, takes the larger kernel (about 1.3x faster than
        padding and a 3x3 convolution at stride 2, at batch 32)."""
        if 2 * self.padding != self.kernel_size - 1:
            return None
        if stride == 1:
            return self.kernel_size
        if stride == 2 and self.folded:
            return self.kernel_size + 1
        return None

    def _project(self, part, tokens_map, batch, training):
        conv = getattr(self, f"conv_proj_{part}")
        if conv.padding == "valid":
            tokens_map = symmetric_pad(tokens_map, self.padding)
        x = conv(tokens_map)
        if not self.folded:
            x = getattr(self, f"conv_proj_{part}_bn")(x, training=training)
        return ops.reshape(x, (batch, -1, self.dim))

    def _split_heads(self, x, batch):
        head_dim = self.dim // self.num_heads
        if self.num_heads == 1:
            # One head: moving its axis of size 1 keeps the order in memory, so a reshape does
            # it without the copy a transpose makes.
            shape = (1, batch, -1, head_dim) if self.folded else (batch, 1, -1, head_dim)
            return ops.reshape(x, shape)
        x = ops.reshape(x, (batch, -1, self.num_heads, head_dim))
        # Heads first in the folded form, the layout `HeadProjection` gives k and v.
        return ops.transpose(x, (2, 0, 1, 3) if self.folded else (0, 2, 1, 3))

    def call(self, x, height, width, training=None):
        batch = ops.shape(x)[0]
        if self.with_cls_token:
            cls_token, x = x[:, :1], x[:, 1:]
        tokens_map = ops.reshape(x, (batch, height, width, self.dim))
        qkv = []
        for part in "qkv":
            t = self._project(part, tokens_map, batch, training)
            if self.with_cls_token:
                t = ops.concatenate([cls_token, t], axis=1)
            projection = getattr(self, f"proj_{part}")
            if isinstance(projection, HeadProjection):
                qkv.append(projection(t))
                continue
            t = projection(ops.reshape(t, (-1, self.dim)))
            if part == "q" and not self.folded:
                # Scaling q costs a pass over dim-wide tokens, scaling the scores one over the
                # (much larger) attention matrix.
                t = t * ops.cast(self.scale, t.dtype)
            qkv.append(self._split_heads(t, batch))
        q, k, v = qkv
        scores = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2)))
        if training or keras.backend.standardize_dtype(scores.dtype) == "float16":
            # float16 scores can overflow, and training wants float32 softmax gradients. For
            # bfloat16 inference (float32's range) the two casts of the attention matrix would
            # cost more than the softmax itself.
            scores = ops.cast(scores, "float32")
        weights = ops.cast(ops.softmax(scores, axis=-1), v.dtype)
        out = ops.matmul(weights, v)
        if self.num_heads > 1:
            # (heads, batch, ...) when folded, else (batch, heads, ...)
            # -> (batch, tokens, heads, ...)
            out = ops.transpose(out, (1, 2, 0, 3) if self.folded else (0, 2, 1, 3))
        out = self.proj(ops.reshape(out, (-1, self.dim)))
        return ops.reshape(out, (batch, -1, self.dim))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "dim": self.dim,
            "num_heads": self.num_heads,
            "with_cls_token": self.with_cls_token,
            "kernel_size": self.kernel_size,
            "q_stride": self.q_stride,
            "kv_stride": self.kv_stride,
            "padding": self.padding,
            "qkv_bias": self.qkv_bias,
            "folded": self.folded,
        }


@keras.saving.register_keras_serializable(package="keras_cvt")
class CvTBlock(layers.Layer):
    """Pre-norm transformer block with convolutional projection attention.

    Called on an NHWC map, or on `[map, cls_token]` in the stage that carries the class
    token; returns the same structure.

    Args:
        dim: channels of the map (token width).
        num_heads: attention heads.
        mlp_ratio: hidden width of the MLP relative to `dim`.
        drop_path_rate: stochastic depth rate of both residual branches.
        with_cls_token: whether a class token travels with the map.
        folded: the inference form that `keras_cvt.optimize_for_inference` builds: the
            attention's BatchNorms and scale folded into its weights (`ConvAttention`), and
            QuickGELU's factor folded into `fc1` and `fc2`, so that the MLP activation is
            SiLU: `fc2(quick_gelu(fc1(x)))` = `(fc2 / 1.702)(silu((1.702 fc1)(x)))`, one
            fused operation instead of four.
    """

    def __init__(
        self,
        dim,
        num_heads,
        mlp_ratio=4.0,
        drop_path_rate=0.0,
        with_cls_token=False,
        folded=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.dim = dim
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.drop_path_rate = drop_path_rate
        self.with_cls_token = with_cls_token
        self.folded = folded
        policy = self.dtype_policy
        self.norm1 = LayerNorm(name="norm1", dtype=policy)
        self.attn = ConvAttention(
            dim, num_heads, with_cls_token, folded=folded, name="attn", dtype=policy
        )
        self.drop_path = StochasticDepth(drop_path_rate, name="drop_path", dtype=policy)
        self.norm2 = LayerNorm(name="norm2", dtype=policy)
        self.fc1 = layers.Dense(
            int(dim * mlp_ratio), kernel_initializer=_dense_initializer(), name="fc1", dtype=policy
        )
        self.fc2 = layers.Dense(
            dim, kernel_initializer=_dense_initializer(), name="fc2", dtype=policy
        )

    def build(self, input_shape):
        tokens_shape = (None, None, self.dim)
        self.norm1.build(tokens_shape)
        self.attn.build(tokens_shape)
        self.norm2.build(tokens_shape)
        self.fc1.build(tokens_shape)
        self.fc2.build((None, None, int(self.dim * self.mlp_ratio)))

    def call(self, inputs, training=None):
        x_map = inputs[0] if self.with_cls_token else inputs
        batch, height, width = ops.shape(x_map)[0], ops.shape(x_map)[1], ops.shape(x_map)[2]
        x = ops.reshape(x_map, (batch, -1, self.dim))
        if self.with_cls_token:
            x = ops.concatenate([inputs[1], x], axis=1)
        attn = self.attn(self.norm1(x), height=height, width=width, training=training)
        x = x + self.drop_path(attn, training=training)
        activation = ops.silu if self.folded else quick_gelu
        mlp = self.fc2(activation(self.fc1(self.norm2(ops.reshape(x, (-1, self.dim))))))
        x = x + self.drop_path(ops.reshape(mlp, ops.shape(x)), training=training)
        if not self.with_cls_token:
            return ops.reshape(x, (batch, height, width, self.dim))
        return [ops.reshape(x[:, 1:], (batch, height, width, self.dim)), x[:, :1]]

    def compute_output_shape(self, input_shape):
        if self.with_cls_token:
            return [tuple(input_shape[0]), tuple(input_shape[1])]
        return tuple(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "dim": self.dim,
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
            "drop_path_rate": self.drop_path_rate,
            "with_cls_token": self.with_cls_token,
            "folded": self.folded,
        }


@keras.saving.register_keras_serializable(package="keras_cvt")
class ClassToken(layers.Layer):
    """The learned class token of the last stage, repeated for every sample of a batch.

    Called on the stage's map only to read the batch size; returns `(batch, 1, dim)`.

    Args:
        dim: token width.
    """

    def __init__(self, dim, **kwargs):
        super().__init__(**kwargs)
        self.dim = dim

    def build(self, input_shape):
        self.token = self.add_weight(
            shape=(1, 1, self.dim), initializer=_dense_initializer(), name="token"
        )

    def call(self, x):
        token = ops.cast(self.token, self.compute_dtype)
        return ops.broadcast_to(token, (ops.shape(x)[0], 1, self.dim))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1, self.dim)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim}
