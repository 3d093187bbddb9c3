"""The folded layers of the inference form, which `keras_cvt.optimize_for_inference` builds in
place of the training layers and fills with weights computed from theirs.

They compute what the training layers compute (to float32 rounding) with fewer operations:

- `FoldedConvAttention`: each BatchNorm folded into its depthwise convolution (which gets a
  bias), the attention scale folded into the query projection's weights, and no key bias (it
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
from keras import ops

from keras_cvt.layers import PROJECTIONS, QUERY, ConvAttentionBase, CvTBlock, convolve, dense


@keras.saving.register_keras_serializable(package="keras_cvt")
class FoldedConvAttention(ConvAttentionBase):
    """`keras_cvt.ConvAttention` with its BatchNorms, scale and k/v biases folded into its
    weights (see the module docstring); the same arguments and calls.

    Its weights come from `keras_cvt.optimize_for_inference`: `conv_proj_q/k/v` (depthwise
    kernels with a bias; the strided ones one larger where "same" padding allows), `proj_q` (a
    Dense layer, with a bias if `qkv_bias`), `proj_k` and `proj_v` (Dense layers without bias)
    and `proj`.
    """

    def __init__(self, *args, class_token_only=False, **kwargs):
        # Read by `_make_layers`, which the base class's constructor calls.
        self.class_token_only = bool(class_token_only)
        super().__init__(*args, **kwargs)
        if self.class_token_only and not self.with_cls_token:
            raise ValueError("`class_token_only`=True needs a class token: pass with_cls_token=True")

    def _make_layers(self):
        for projection in PROJECTIONS:
            setattr(self, projection.conv, self._projection_conv(projection, True, enlarge_strided=True))
            # Only the query keeps its Linear bias (see the module docstring).
            use_bias = self.qkv_bias and projection is QUERY
            linear = dense(self.dim, use_bias, projection.linear, self.sub_layer_dtype(projection.linear))
            setattr(self, projection.linear, linear)

    def build(self, input_shape):
        map_shape = (None, None, None, self.dim)
        for conv, projection in self._projections():
            conv.build(map_shape)
            projection.build(input_shape)
        self.proj.build(input_shape)

    def _projections(self):
        """(convolution, Linear) of each of `PROJECTIONS`."""
        return tuple((getattr(self, p.conv), getattr(self, p.linear)) for p in PROJECTIONS)

    def _qkv(self, tokens_map, cls_token, training):
        (q_conv, q_projection), *kv = self._projections()
        if self.class_token_only:
            # The class token bypasses the query convolution: its query is its projection.
            q = cls_token
        else:
            q = self._tokens(convolve(q_conv, tokens_map, self.attention_padding), cls_token)
        k, v = (
            self._heads(projection, self._tokens(convolve(conv, tokens_map, self.attention_padding), cls_token))
            for conv, projection in kv
        )
        return self._heads(q_projection, q), k, v

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

    def call(self, inputs, training=None, normalised=None, class_attention_offset=None):
        if not self.class_token_only:
            return super().call(
                inputs, training=training, normalised=normalised, class_attention_offset=class_attention_offset
            )
        x_map, cls_token = inputs
        x, height, width = self._tokens(inputs)
        normalised = self.norm1(x) if normalised is None else normalised
        attn = self.attn(
            normalised, height=height, width=width, training=training, class_attention_offset=class_attention_offset
        )
        cls_token = cls_token + self.drop_path(attn, training=training)
        cls_token = cls_token + self.drop_path(self._mlp(cls_token), training=training)
        return [x_map, cls_token]

    def get_config(self):
        return {**super().get_config(), "class_token_only": self.class_token_only}
