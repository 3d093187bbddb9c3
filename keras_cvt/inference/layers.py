"""The folded layers of the inference form, which `keras_cvt.optimize_for_inference` builds in
place of the training layers and fills with weights computed from theirs.

They compute what the training layers compute (to float32 rounding) with fewer operations:

- `FoldedConvAttention`: each BatchNorm folded into its depthwise convolution (which gets a
  bias), the attention scale folded into the query projection's weights, and k and v
  projected straight into heads (`HeadProjection`, heads first like q), with no key bias (it
  adds one constant to each row of scores, which softmax ignores) and the value bias folded
  into `proj`'s bias (each row of attention weights sums to 1, so it passes through
  unchanged); strided convolutions take a kernel one larger with "same" padding instead of a
  padded copy of the map, where that computes the same (`keras_cvt.layers.same_kernel_size`).
- `FoldedCvTBlock`: that attention, and QuickGELU's factor folded into `fc1` and `fc2`, so that
  the MLP activation is SiLU: `fc2(quick_gelu(fc1(x)))` = `(fc2 / 1.702)(silu((1.702 fc1)(x)))`,
  one fused operation instead of four.
- `class_token_only=True` (both layers): the block computes only the class token's output,
  when nothing reads its map (the last block of a classifier, whose head reads the class token
  alone). Keys and values still come from every token, but the query, the attention's rows,
  the output projection and the MLP are one token's instead of all of them: in CvT-13, whose
  last block is one of ten at 197 tokens, about 6% of the model's multiply-adds.

Every backend runs them; `import keras_cvt` imports this module (to register the layers for
loading `.keras` files), so it imports no TensorFlow.
"""

import keras
from keras import layers, ops

from keras_cvt.layers import (
    ConvAttentionBase,
    CvTBlock,
    convolve,
    dense,
    dense_initializer,
    projection_conv,
)


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
            initializer=dense_initializer(),
            name="kernel",
        )
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(
                shape=(self.num_heads, 1, self.head_dim), initializer="zeros", name="bias"
            )

    def call(self, x):
        tokens = ops.reshape(x, (-1, ops.shape(x)[-1]))
        y = ops.matmul(tokens, ops.cast(self.kernel, self.compute_dtype))
        if self.use_bias:
            y = y + ops.cast(self.bias, self.compute_dtype)
        # The tokens, not the batch, in the shape: a constant in a graph of a fixed size.
        return ops.reshape(y, (self.num_heads, -1, ops.shape(x)[1], self.head_dim))

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
class FoldedConvAttention(ConvAttentionBase):
    """`keras_cvt.ConvAttention` with its BatchNorms, scale and k/v biases folded into its
    weights (see the module docstring); the same arguments and calls.

    Its weights come from `keras_cvt.optimize_for_inference`: `conv_proj_q/k/v` (depthwise
    kernels with a bias; the strided ones one larger where "same" padding allows), `proj_q` (a
    Dense layer, with a bias if `qkv_bias`), `proj_k` and `proj_v` (`HeadProjection`s without
    bias) and `proj`.
    """

    # Heads first: the layout `HeadProjection` gives k and v.
    heads_axis = 0

    def __init__(self, *args, class_token_only=False, **kwargs):
        # Read by `_make_layers`, which the base class's constructor calls.
        self.class_token_only = bool(class_token_only)
        super().__init__(*args, **kwargs)
        if self.class_token_only and not self.with_cls_token:
            raise ValueError("`class_token_only`=True needs a class token: pass with_cls_token=True")

    def _make_layers(self):
        policy, size, padding, head_dim = (
            self.dtype_policy,
            self.kernel_size,
            self.padding,
            self.dim // self.num_heads,
        )
        self.conv_proj_q = projection_conv(size, self.q_stride, padding, True, "conv_proj_q", policy, True)
        self.proj_q = dense(self.dim, self.qkv_bias, "proj_q", policy)
        self.conv_proj_k = projection_conv(size, self.kv_stride, padding, True, "conv_proj_k", policy, True)
        self.proj_k = HeadProjection(self.num_heads, head_dim, use_bias=False, name="proj_k", dtype=policy)
        self.conv_proj_v = projection_conv(size, self.kv_stride, padding, True, "conv_proj_v", policy, True)
        self.proj_v = HeadProjection(self.num_heads, head_dim, use_bias=False, name="proj_v", dtype=policy)

    def build(self, input_shape):
        map_shape = (None, None, None, self.dim)
        for conv, projection in (
            (self.conv_proj_q, self.proj_q),
            (self.conv_proj_k, self.proj_k),
            (self.conv_proj_v, self.proj_v),
        ):
            conv.build(map_shape)
            projection.build(input_shape)
        self.proj.build(input_shape)

    def _qkv(self, tokens_map, cls_token, training):
        if self.class_token_only:
            # The class token bypasses the query convolution: its query is its projection.
            q = cls_token
        else:
            q = self._tokens(convolve(self.conv_proj_q, tokens_map, self.padding), cls_token)
        q = self._split_heads(self.proj_q(ops.reshape(q, (-1, self.dim))), ops.shape(q)[1])
        k = self.proj_k(self._tokens(convolve(self.conv_proj_k, tokens_map, self.padding), cls_token))
        v = self.proj_v(self._tokens(convolve(self.conv_proj_v, tokens_map, self.padding), cls_token))
        return q, k, v

    def compute_output_shape(self, input_shape):
        if self.class_token_only:
            return (input_shape[0], 1, input_shape[2])
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "class_token_only": self.class_token_only}


@keras.saving.register_keras_serializable(package="keras_cvt")
class FoldedCvTBlock(CvTBlock):
    """`keras_cvt.CvTBlock` with `FoldedConvAttention` and QuickGELU's factor folded into
    `fc1` and `fc2` (the activation is SiLU); the same arguments and calls. Its weights come
    from `keras_cvt.optimize_for_inference`.

    Args:
        class_token_only: compute only the class token's output (needs `with_cls_token`); the
            map comes out as it came in, not transformed. `optimize_for_inference` sets it on
            a block whose map nothing reads.
        Others: those of `keras_cvt.CvTBlock`.
    """

    attention_class = FoldedConvAttention
    activation = staticmethod(ops.silu)

    def __init__(self, *args, class_token_only=False, **kwargs):
        # Read by `_attention_options`, which the base class's constructor calls.
        self.class_token_only = bool(class_token_only)
        super().__init__(*args, **kwargs)

    def _attention_options(self):
        return {"class_token_only": self.class_token_only}

    def call(self, inputs, training=None):
        if not self.class_token_only:
            return super().call(inputs, training=training)
        x_map, cls_token = inputs
        x, height, width = self._tokens(inputs)
        attn = self.attn(self.norm1(x), height=height, width=width, training=training)
        cls_token = cls_token + self.drop_path(attn, training=training)
        cls_token = cls_token + self.drop_path(self._mlp(cls_token), training=training)
        return [x_map, cls_token]

    def get_config(self):
        return {**super().get_config(), "class_token_only": self.class_token_only}
