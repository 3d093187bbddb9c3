"""The building blocks of CvT, written with `keras.ops` so every backend runs them.

Feature maps are NHWC throughout. Inside a transformer block the map is flattened to
row-major tokens, which is the order the original NCHW `rearrange(x, 'b c h w -> b (h w) c')`
produces, so weights and activations line up with the PyTorch model element for element.
"""

import dataclasses

import keras
from keras import layers, ops

from keras_cvt.architectures import ATTENTION_OPTIONS
from keras_cvt.attention import attention

# The original uses PyTorch's defaults for LayerNorm/BatchNorm (eps 1e-5) everywhere;
# Keras' default of 1e-3 visibly changes the logits.
NORM_EPSILON = 1e-5
# PyTorch's BatchNorm momentum 0.1 weighs the new batch; Keras' momentum weighs the old value.
BATCH_NORM_MOMENTUM = 0.9


def dense_initializer():
    return keras.initializers.TruncatedNormal(stddev=0.02)


# The attention options' defaults (`keras_cvt.architectures.ATTENTION_OPTIONS`) one by one.
ATTENTION_KERNEL_SIZE = ATTENTION_OPTIONS["attention_kernel_size"]
Q_STRIDE = ATTENTION_OPTIONS["q_stride"]
KV_STRIDE = ATTENTION_OPTIONS["kv_stride"]
ATTENTION_PADDING = ATTENTION_OPTIONS["attention_padding"]
QKV_BIAS = ATTENTION_OPTIONS["qkv_bias"]
# The names `ConvAttention` gave two of them before keras_cvt 0.3, still accepted there (and
# read from the configs of older `.keras` files).
_OLD_ATTENTION_NAMES = {"kernel_size": "attention_kernel_size", "padding": "attention_padding"}


@dataclasses.dataclass(frozen=True)
class Projection:
    """One of the attention's three projections, as the original names its modules: a
    depthwise convolution (`conv_proj_{part}`) with a BatchNorm (`conv_proj_{part}_bn` here,
    `conv_proj_{part}.bn` there), then a Linear layer (`proj_{part}`).

    Attributes:
        part: "q", "k" or "v".
        stride: the attention option that gives its convolution's stride.
    """

    part: str
    stride: str

    @property
    def conv(self):
        return f"conv_proj_{self.part}"

    @property
    def batch_norm(self):
        return f"conv_proj_{self.part}_bn"

    @property
    def linear(self):
        return f"proj_{self.part}"


# In the order the attention computes and stores them; everything that names the q/k/v layers
# (both attention forms, folding, the converter's map and expected shapes) reads this.
PROJECTIONS = QUERY, KEY, VALUE = (
    Projection("q", "q_stride"),
    Projection("k", "kv_stride"),
    Projection("v", "kv_stride"),
)

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


class CompositeLayerBase(layers.Layer):
    """A layer made of named sub-layers, each made with `dtype=self.sub_layer_dtype(name)`,
    whose config keeps what Keras' `model.quantize` did to them.

    `quantize` gives each layer it quantizes (the Dense layers) a policy of its own, with int8
    kernels and their scales, which a layer rebuilt from a float config would not know (and
    could not load those weights). After `quantize`, the config's `dtype` is a
    `keras.dtype_policies.DTypePolicyMap` of the quantized sub-layers' policies, keyed by
    their paths below this layer; rebuilt from it, each sub-layer is made with its own policy
    again. (Not the map itself, as Keras' `MultiHeadAttention` example does: Keras 3.15's Dense
    layers read `dtype_policy.quantization_mode`, which a shared map answers with its default,
    and then fail to save.)
    """

    def __init__(self, dtype=None, **kwargs):
        self._sub_layer_policies = {}
        if dtype is not None:
            dtype = keras.dtype_policies.get(dtype)
            if isinstance(dtype, keras.dtype_policies.DTypePolicyMap):
                self._sub_layer_policies = dict(dtype.items())
                dtype = dtype.default_policy
        super().__init__(dtype=dtype, **kwargs)

    def sub_layer_dtype(self, name):
        """The dtype policy for the sub-layer `name`: this layer's, or the one its config
        saved for it (a `DTypePolicyMap` of those below it, for a composite sub-layer)."""
        if name in self._sub_layer_policies:
            return self._sub_layer_policies[name]
        prefix = name + "/"
        below = {
            path[len(prefix) :]: policy
            for path, policy in self._sub_layer_policies.items()
            if path.startswith(prefix)
        }
        if not below:
            return self.dtype_policy
        return keras.dtype_policies.DTypePolicyMap(default_policy=self.dtype_policy, policy_map=below)

    def get_config(self):
        config = super().get_config()
        # Keras quantizes built layers only; a layer's path is known once it is built.
        prefix = f"{self.path}/"
        quantized = {
            layer.path[len(prefix) :]: layer.dtype_policy
            for layer in self._flatten_layers(include_self=False)
            if self.built and layer.quantization_mode is not None
        }
        if quantized:
            config["dtype"] = keras.dtype_policies.serialize(
                keras.dtype_policies.DTypePolicyMap(default_policy=self.dtype_policy, policy_map=quantized)
            )
        return config


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
class ConvEmbedding(CompositeLayerBase):
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
            dtype=self.sub_layer_dtype("proj"),
        )
        self.norm = LayerNorm(name="norm", dtype=self.sub_layer_dtype("norm"))

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


def same_kernel_size(kernel_size, stride, padding, enlarge_strided=False):
    """The kernel size of a convolution with "same" padding that computes a `kernel_size`
    convolution with symmetric `padding` at `stride` without a padded copy of the map, or None
    (then the map is padded and convolved "valid").

    Unstrided, "same" pads (kernel - 1) / 2 on each side: the symmetric padding itself. At
    stride 2 it puts an odd total's extra row and column last; for a kernel one larger it pads
    `padding` first, and the kernel's last row and column, zero, reach none of what it pads
    last. Only the folded form, whose kernels `keras_cvt.optimize_for_inference` computes,
    takes the larger kernel (`enlarge_strided`; about 1.3x faster than padding and a 3x3
    convolution at stride 2, at batch 32).
    """
    if 2 * padding != kernel_size - 1:
        return None
    if stride == 1:
        return kernel_size
    if stride == 2 and enlarge_strided:
        return kernel_size + 1
    return None


def projection_conv(kernel_size, stride, padding, use_bias, name, dtype, enlarge_strided=False):
    """The depthwise convolution of a q/k/v projection, "same" where `same_kernel_size` allows;
    apply it with `convolve`."""
    same = same_kernel_size(kernel_size, stride, padding, enlarge_strided)
    return layers.DepthwiseConv2D(
        same or kernel_size,
        strides=stride,
        padding="same" if same else "valid",
        use_bias=use_bias,
        data_format="channels_last",
        name=name,
        dtype=dtype,
    )


def map_tokens(x_map):
    """The number of tokens of an NHWC map, height times width.

    Reshapes put this, not the batch, in their target shape (the batch as -1): where height
    and width are known when the graph is made (an export of a fixed size) it is a number, and
    the exported graph has a constant shape instead of the arithmetic that reads the batch at
    run time, which LiteRT's XNNPACK cannot run (each such operation splits its graph) and
    OpenVINO and ONNX Runtime run as extra nodes.
    """
    shape = ops.shape(x_map)
    return shape[1] * shape[2]


def convolve(conv, x_map, padding):
    """`conv` (from `projection_conv`) applied to `x_map` with PyTorch's symmetric padding."""
    if conv.padding == "valid":
        x_map = symmetric_pad(x_map, padding)
    return conv(x_map)


def dense(units, use_bias, name, dtype):
    return layers.Dense(
        units, use_bias=use_bias, kernel_initializer=dense_initializer(), name=name, dtype=dtype
    )


def _old_attention_names(kwargs, **options):
    """`options` with the values that `kwargs` gives under their names before keras_cvt 0.3
    (popped from it), refusing both names at once."""
    for old, new in _OLD_ATTENTION_NAMES.items():
        if old in kwargs:
            value = kwargs.pop(old)
            if options[new] != ATTENTION_OPTIONS[new] and options[new] != value:
                raise ValueError(
                    f"`{old}` is the old name of `{new}`: pass one of them, got {old}={value!r} "
                    f"and {new}={options[new]!r}"
                )
            options[new] = value
    return options


def _refuse_folded(cls, config):
    """Configs saved before the folded form had classes of its own carry `folded`: False is
    the training form; True cannot be rebuilt from a training layer's class."""
    config = dict(config)
    if config.pop("folded", False):
        raise ValueError(
            f"This `{cls.__name__}` config was saved in the folded inference form of an older "
            "keras_cvt, which is now `keras_cvt.inference.layers.Folded*`: load the trained model "
            "and fold it again with `keras_cvt.optimize_for_inference`"
        )
    return cls(**config)


class ConvAttentionBase(CompositeLayerBase):
    """What the training form (`ConvAttention`) and the folded form
    (`keras_cvt.inference.layers.FoldedConvAttention`) share: the arguments, the split of the
    class token, the attention itself and the output projection. A subclass makes the q/k/v
    projections (`_qkv`), each split into heads by `_heads`."""

    def __init__(
        self,
        dim,
        num_heads,
        with_cls_token=False,
        attention_kernel_size=ATTENTION_KERNEL_SIZE,
        q_stride=Q_STRIDE,
        kv_stride=KV_STRIDE,
        attention_padding=ATTENTION_PADDING,
        qkv_bias=QKV_BIAS,
        **kwargs,
    ):
        options = _old_attention_names(
            kwargs, attention_kernel_size=attention_kernel_size, attention_padding=attention_padding
        )
        super().__init__(**kwargs)
        if dim % num_heads:
            raise ValueError(f"`num_heads` must divide `dim`, got dim={dim}, num_heads={num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.with_cls_token = with_cls_token
        self.attention_kernel_size = options["attention_kernel_size"]
        self.q_stride = q_stride
        self.kv_stride = kv_stride
        self.attention_padding = options["attention_padding"]
        self.qkv_bias = qkv_bias
        # The original scales by the full width, not the head width.
        self.scale = dim**-0.5
        self._make_layers()
        self.proj = dense(dim, True, "proj", self.sub_layer_dtype("proj"))

    # The 0.2 names of `attention_kernel_size` and `attention_padding`, read-only.
    kernel_size = property(lambda self: self.attention_kernel_size)
    padding = property(lambda self: self.attention_padding)

    def _make_layers(self):
        """Makes the layers of each of `PROJECTIONS`, each its own attribute with its own name
        (the paths of the weights in `.weights.h5` files)."""
        raise NotImplementedError(f"{type(self).__name__} must define `_make_layers`")

    def _projection_conv(self, projection, use_bias, enlarge_strided=False):
        """The depthwise convolution of `projection` (a `Projection`), with its stride."""
        stride = getattr(self, projection.stride)
        return projection_conv(
            self.attention_kernel_size, stride, self.attention_padding, use_bias, projection.conv,
            self.sub_layer_dtype(projection.conv), enlarge_strided,
        )

    def _tokens(self, x_map, cls_token):
        """A projected map as tokens `(batch, tokens, dim)`, the class token first if any."""
        x = ops.reshape(x_map, (-1, map_tokens(x_map), self.dim))
        return x if cls_token is None else ops.concatenate([cls_token, x], axis=1)

    def _heads(self, projection, tokens):
        """`projection` (a Dense layer) of `tokens` `(batch, tokens, dim)`, split into heads:
        `(batch, heads, tokens, head_dim)`. Batch first, the layout OpenVINO's CPU plugin
        recognises as attention: it fuses the transposes into its attention kernel (measured
        on CvT-13 at batch 32: 6% sooner than heads first, and TensorFlow no slower)."""
        count = ops.shape(tokens)[1]
        x = projection(ops.reshape(tokens, (-1, self.dim)))
        head_dim = self.dim // self.num_heads
        if self.num_heads == 1:
            # One head: moving its axis of size 1 keeps the order in memory, so a reshape does
            # it without the copy a transpose makes.
            return ops.reshape(x, (-1, 1, count, head_dim))
        x = ops.reshape(x, (-1, count, self.num_heads, head_dim))
        return ops.transpose(x, (0, 2, 1, 3))

    def _split_qkv(self, x, height, width, training):
        """q, k and v of tokens `x` (the class token first if any) of a `height` x `width` map."""
        cls_token = None
        if self.with_cls_token:
            cls_token, x = x[:, :1], x[:, 1:]
        return self._qkv(ops.reshape(x, (-1, height, width, self.dim)), cls_token, training)

    def call(self, x, height, width, training=None, class_attention_offset=None):
        """`class_attention_offset`: `(batch, heads, 1, keys)` added to the class token's
        attention probabilities (zeros: the same output), so that a caller can differentiate
        with respect to them (`keras_cvt.explain`'s attention gradient); None in a model."""
        q, k, v = self._split_qkv(x, height, width, training)
        if class_attention_offset is None:
            out = attention(q, k, v, training=training)
        else:
            probabilities = self._probabilities(q[:, :, :1], k) + class_attention_offset
            out = ops.matmul(ops.cast(probabilities, v.dtype), v)
            if q.shape[2] != 1:
                out = ops.concatenate([out, attention(q[:, :, 1:], k, v, training=training)], axis=2)
        if self.num_heads > 1:
            # -> (batch, tokens, heads, head_dim)
            out = ops.transpose(out, (0, 2, 1, 3))
        out = self.proj(ops.reshape(out, (-1, self.dim)))
        return ops.reshape(out, (-1, ops.shape(q)[2], self.dim))

    def _qkv(self, tokens_map, cls_token, training):
        """q, k and v of `tokens_map` (`(batch, height, width, dim)`), split into heads."""
        raise NotImplementedError(f"{type(self).__name__} must define `_qkv`")

    def attention_weights(self, x, height, width):
        """The attention probabilities `call` computes on the same arguments, `(batch, heads,
        queries, keys)`, in float32 (`softmax(q kᵀ)`, q already scaled). `call` never keeps
        them (its score computation may be chunked); `keras_cvt.explain` computes them here."""
        q, k, _ = self._split_qkv(x, height, width, False)
        return self._probabilities(q, k)

    @staticmethod
    def _probabilities(q, k):
        """softmax(q kᵀ) in float32, q already scaled."""
        scores = ops.matmul(ops.cast(q, "float32"), ops.transpose(ops.cast(k, "float32"), (0, 1, 3, 2)))
        return ops.softmax(scores, axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "dim": self.dim,
            "num_heads": self.num_heads,
            "with_cls_token": self.with_cls_token,
            "attention_kernel_size": self.attention_kernel_size,
            "q_stride": self.q_stride,
            "kv_stride": self.kv_stride,
            "attention_padding": self.attention_padding,
            "qkv_bias": self.qkv_bias,
        }

    @classmethod
    def from_config(cls, config):
        return _refuse_folded(cls, config)


@keras.saving.register_keras_serializable(package="keras_cvt")
class ConvAttention(ConvAttentionBase):
    """Multi-head attention with convolutional projections (the original's `dw_bn`).

    Queries, keys and values are taken from the token map by a depthwise convolution and
    BatchNorm each (keys and values with a stride, which shrinks the attention matrix), then
    a Linear layer. A class token, when present, bypasses the convolutions and is prepended
    to each of q, k and v before their Linear layers.

    Call with tokens `(batch, cls + height * width, dim)` and the map's `height`, `width`.
    `keras_cvt.optimize_for_inference` replaces it with the equivalent
    `keras_cvt.inference.layers.FoldedConvAttention`.

    Args:
        dim: token width.
        num_heads: number of attention heads; must divide `dim`.
        with_cls_token: whether the first token is a class token.
        attention_kernel_size: depthwise kernel size of the projections (also accepted as
            `kernel_size`, its name before keras_cvt 0.3).
        q_stride: stride of the query projection.
        kv_stride: stride of the key and value projections.
        attention_padding: symmetric zero padding of the projections (also accepted as
            `padding`).
        qkv_bias: whether the q/k/v Linear layers have a bias.
    """

    def _make_layers(self):
        for projection in PROJECTIONS:
            setattr(self, projection.conv, self._projection_conv(projection, False))
            batch_norm = _batch_norm(projection.batch_norm, self.sub_layer_dtype(projection.batch_norm))
            setattr(self, projection.batch_norm, batch_norm)
            linear = dense(self.dim, self.qkv_bias, projection.linear, self.sub_layer_dtype(projection.linear))
            setattr(self, projection.linear, linear)

    def _projections(self):
        """(convolution, BatchNorm, Linear) of each of `PROJECTIONS`."""
        return tuple(
            (getattr(self, p.conv), getattr(self, p.batch_norm), getattr(self, p.linear)) for p in PROJECTIONS
        )

    def build(self, input_shape):
        map_shape = (None, None, None, self.dim)
        for conv, batch_norm, projection in self._projections():
            conv.build(map_shape)
            batch_norm.build(map_shape)
            projection.build(input_shape)
        self.proj.build(input_shape)

    def _qkv(self, tokens_map, cls_token, training):
        heads = []
        for conv, batch_norm, projection in self._projections():
            x_map = batch_norm(convolve(conv, tokens_map, self.attention_padding), training=training)
            heads.append(self._heads(projection, self._tokens(x_map, cls_token)))
        q, k, v = heads
        # Scaling q costs a pass over dim-wide tokens, scaling the scores one over the (much
        # larger) attention matrix.
        return q * ops.cast(self.scale, q.dtype), k, v


def _batch_norm(name, dtype):
    return layers.BatchNormalization(
        momentum=BATCH_NORM_MOMENTUM, epsilon=NORM_EPSILON, name=name, dtype=dtype
    )


@keras.saving.register_keras_serializable(package="keras_cvt")
class CvTBlock(CompositeLayerBase):
    """Pre-norm transformer block with convolutional projection attention.

    Called on an NHWC map, or on `[map, cls_token]` in the stage that carries the class
    token; returns the same structure. `keras_cvt.optimize_for_inference` replaces it with
    the equivalent `keras_cvt.inference.layers.FoldedCvTBlock`.

    Args:
        dim: channels of the map (token width).
        num_heads: attention heads.
        mlp_ratio: hidden width of the MLP relative to `dim`.
        drop_path_rate: stochastic depth rate of both residual branches.
        with_cls_token: whether a class token travels with the map.
        attention_kernel_size, q_stride, kv_stride, attention_padding, qkv_bias: those of its
            `ConvAttention` (`ATTENTION_OPTIONS`).
    """

    # What the folded form replaces (`FoldedCvTBlock`): the attention's class and the MLP's
    # activation.
    attention_class = ConvAttention
    activation = staticmethod(quick_gelu)

    def __init__(
        self,
        dim,
        num_heads,
        mlp_ratio=4.0,
        drop_path_rate=0.0,
        with_cls_token=False,
        attention_kernel_size=ATTENTION_KERNEL_SIZE,
        q_stride=Q_STRIDE,
        kv_stride=KV_STRIDE,
        attention_padding=ATTENTION_PADDING,
        qkv_bias=QKV_BIAS,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.dim = dim
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.drop_path_rate = drop_path_rate
        self.with_cls_token = with_cls_token
        self.attention_kernel_size = attention_kernel_size
        self.q_stride = q_stride
        self.kv_stride = kv_stride
        self.attention_padding = attention_padding
        self.qkv_bias = qkv_bias
        self.norm1 = LayerNorm(name="norm1", dtype=self.sub_layer_dtype("norm1"))
        self.attn = self.attention_class(
            dim,
            num_heads,
            with_cls_token,
            attention_kernel_size=attention_kernel_size,
            q_stride=q_stride,
            kv_stride=kv_stride,
            attention_padding=attention_padding,
            qkv_bias=qkv_bias,
            name="attn",
            dtype=self.sub_layer_dtype("attn"),
            **self._attention_options(),
        )
        self.drop_path = StochasticDepth(drop_path_rate, name="drop_path", dtype=self.sub_layer_dtype("drop_path"))
        self.norm2 = LayerNorm(name="norm2", dtype=self.sub_layer_dtype("norm2"))
        self.fc1 = dense(int(dim * mlp_ratio), True, "fc1", self.sub_layer_dtype("fc1"))
        self.fc2 = dense(dim, True, "fc2", self.sub_layer_dtype("fc2"))

    def _attention_options(self):
        """More arguments of the attention layer, for a subclass's attention class."""
        return {}

    def build(self, input_shape):
        tokens_shape = (None, None, self.dim)
        self.norm1.build(tokens_shape)
        self.attn.build(tokens_shape)
        self.norm2.build(tokens_shape)
        self.fc1.build(tokens_shape)
        self.fc2.build((None, None, int(self.dim * self.mlp_ratio)))
        # No weights, but Keras' model.quantize() walks every sub-layer and refuses unbuilt ones.
        self.drop_path.build(tokens_shape)

    def call(self, inputs, training=None, normalised=None, class_attention_offset=None):
        """`normalised`: `normalised_tokens(inputs)` where the caller computed it, so that it
        can differentiate with respect to the tokens the attention reads; computed here where
        None. `class_attention_offset`: `ConvAttention`'s. Both for `keras_cvt.explain`'s
        class activation maps; a model passes neither."""
        x, height, width = self._tokens(inputs)
        normalised = self.norm1(x) if normalised is None else normalised
        attn = self.attn(
            normalised, height=height, width=width, training=training, class_attention_offset=class_attention_offset
        )
        x = x + self.drop_path(attn, training=training)
        x = x + self.drop_path(self._mlp(x), training=training)
        if not self.with_cls_token:
            return ops.reshape(x, (-1, height, width, self.dim))
        return [ops.reshape(x[:, 1:], (-1, height, width, self.dim)), x[:, :1]]

    def normalised_tokens(self, inputs):
        """The tokens the attention reads: `norm1` of `inputs` (what `call` takes) as tokens
        `(batch, tokens, dim)`, the class token first where there is one."""
        return self.norm1(self._tokens(inputs)[0])

    def attention_weights(self, inputs):
        """The attention probabilities of this block on `inputs` (what `call` takes), `(batch,
        heads, queries, keys)` in float32: the keys, and the queries, are the class token first
        where there is one, then the map's tokens row by row."""
        _, height, width = self._tokens(inputs)
        return self.attn.attention_weights(self.normalised_tokens(inputs), height, width)

    def _tokens(self, inputs):
        """The block's input as tokens `(batch, tokens, dim)`, the class token first if any,
        and the map's height and width."""
        x_map = inputs[0] if self.with_cls_token else inputs
        x = ops.reshape(x_map, (-1, map_tokens(x_map), self.dim))
        if self.with_cls_token:
            x = ops.concatenate([inputs[1], x], axis=1)
        return x, ops.shape(x_map)[1], ops.shape(x_map)[2]

    def _mlp(self, x):
        """The MLP branch of tokens `x` `(batch, tokens, dim)`."""
        mlp = self.fc2(self.activation(self.fc1(self.norm2(ops.reshape(x, (-1, self.dim))))))
        return ops.reshape(mlp, (-1, ops.shape(x)[1], self.dim))

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
            "attention_kernel_size": self.attention_kernel_size,
            "q_stride": self.q_stride,
            "kv_stride": self.kv_stride,
            "attention_padding": self.attention_padding,
            "qkv_bias": self.qkv_bias,
        }

    @classmethod
    def from_config(cls, config):
        return _refuse_folded(cls, config)


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
        self.token = self.add_weight(shape=(1, 1, self.dim), initializer=dense_initializer(), name="token")

    def call(self, x):
        token = ops.cast(self.token, self.compute_dtype)
        return ops.broadcast_to(token, (ops.shape(x)[0], 1, self.dim))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1, self.dim)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim}
