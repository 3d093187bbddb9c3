"""A CvT rewritten for fast inference: the same function with fewer operations.

`optimize_for_inference(model)` returns a new model, built from `model`'s config with every
`CvTBlock` replaced by a `FoldedCvTBlock` of the same arguments (`keras_cvt.inference.layers`),
whose weights are computed from `model`'s:

- each attention BatchNorm (inference statistics) folded into its depthwise convolution,
  `w * gamma / sqrt(var + eps)` with the bias `beta - mean * gamma / sqrt(var + eps)`;
- the attention scale folded into the query projection (`proj_q` kernel and bias);
- the key bias dropped (it shifts each row of scores by a constant, which softmax ignores) and
  the value bias folded into the output projection's bias (attention weights sum to 1 per row);
- QuickGELU's 1.702 folded into `fc1` (times 1.702) and `fc2`'s kernel (divided by it), so that
  the activation is a plain SiLU, which TensorFlow runs as one fused operation;
- a block whose map no layer and no output reads (a classifier's last block: the head reads the
  class token) computes the class token alone (`FoldedCvTBlock(class_token_only=True)`).

Outputs equal the original model's to float32 rounding (the tests hold them to 1e-5), for
any input size. With `dtype="bfloat16"` the copy computes in bfloat16 (weights stored in
bfloat16; LayerNorm statistics and the classifier in float32): the
fast path on CPUs with AVX-512 BF16 and on GPUs. The folded model has no BatchNorm to update,
so it is meant for inference; train the original model.
"""

import keras
import numpy as np

from keras_cvt.inference.layers import FoldedCvTBlock
from keras_cvt.layers import PROJECTIONS, QUERY, QUICK_GELU_FACTOR, VALUE, CvTBlock

DTYPES = ("float32", "bfloat16", "float16")


def optimize_for_inference(model, dtype=None):
    """Returns a copy of `model` with BatchNorm, the attention scale and QuickGELU folded.

    Args:
        model: a model built by `keras_cvt` (`CvT13`, `CvT`, ... with any arguments).
        dtype: None keeps `model`'s dtype policy; `"float32"`, `"bfloat16"` or `"float16"` sets
            the compute (and weight) dtype of every layer except the classifier, which stays
            float32.

    Returns:
        A new `keras.Model` with the same inputs, outputs and layer names (except the
        removed `conv_proj_*_bn` layers).
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model, got {type(model).__name__}")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"`dtype` must be None or one of {DTYPES}, got dtype={dtype!r}")
    if not is_foldable(model):
        raise ValueError(f"`model` {model.name!r} has no CvTBlock layers: not a keras_cvt model")

    config = model.get_config()
    read = _read_outputs(config)
    for layer_config in config["layers"]:
        if layer_config.get("registered_name") in (_CVT_BLOCK, _FOLDED_CVT_BLOCK):
            layer_config.update(
                class_name="FoldedCvTBlock",
                registered_name=_FOLDED_CVT_BLOCK,
                module=FoldedCvTBlock.__module__,
            )
            block = layer_config["config"]
            # Output 0 is the map, output 1 the class token.
            block["class_token_only"] = block["with_cls_token"] and (layer_config["name"], 0) not in read
        if dtype is not None and layer_config["config"].get("name") != "predictions":
            layer_config["config"]["dtype"] = dtype
    optimized = model.__class__.from_config(config)

    for layer in model.layers:
        target = optimized.get_layer(layer.name)
        if isinstance(layer, CvTBlock) and not isinstance(layer, FoldedCvTBlock):
            _fold_block(layer, target)
        else:
            target.set_weights(layer.get_weights())
    return optimized


_CVT_BLOCK = keras.saving.get_registered_name(CvTBlock)
_FOLDED_CVT_BLOCK = keras.saving.get_registered_name(FoldedCvTBlock)


def is_foldable(model):
    """Whether `model` has `CvTBlock` layers (folded or not) for `optimize_for_inference`."""
    return any(isinstance(layer, CvTBlock) for layer in model.layers)


def _read_outputs(config):
    """`(layer name, output index)` of every tensor that a layer or the model's outputs read,
    from a functional model's config (where each read tensor names its `keras_history`)."""
    read = set()

    def visit(item):
        if isinstance(item, dict):
            history = item.get("keras_history")
            if history is not None:
                read.add((history[0], history[2]))
            for value in item.values():
                visit(value)
        elif isinstance(item, (list, tuple)):
            for value in item:
                visit(value)

    for layer_config in config["layers"]:
        visit(layer_config.get("inbound_nodes", []))
    outputs = config.get("output_layers")
    if not outputs:
        # Not a functional model's config: any output may be read.
        return {(layer_config["name"], 0) for layer_config in config["layers"]}
    # One output is one `[name, node, index]`, several a list of them.
    for name, _, index in [outputs] if isinstance(outputs[0], str) else outputs:
        read.add((name, index))
    return read


def _fold_block(block, folded):
    for name in ("norm1", "norm2"):
        getattr(folded, name).set_weights(getattr(block, name).get_weights())
    attention, folded_attention = block.attn, folded.attn
    for projection in PROJECTIONS:
        conv, batch_norm = getattr(attention, projection.conv), getattr(attention, projection.batch_norm)
        folded_conv = getattr(folded_attention, projection.conv)
        (kernel,) = conv.get_weights()
        gamma, beta, mean, variance = (w.astype(np.float64) for w in batch_norm.get_weights())
        factor = gamma / np.sqrt(variance + batch_norm.epsilon)
        # Depthwise kernels are (height, width, channels, 1): one factor per channel. A larger
        # folded kernel (a strided one, see `keras_cvt.layers.same_kernel_size`) has a zero last
        # row and column.
        extra = folded_conv.kernel.shape[0] - kernel.shape[0]
        kernel = np.pad(kernel * factor[:, None], [(0, extra), (0, extra), (0, 0), (0, 0)])
        folded_conv.set_weights([kernel, beta - mean * factor])
    for projection in PROJECTIONS:
        weights = getattr(attention, projection.linear).get_weights()
        if projection is QUERY:
            weights = [w.astype(np.float64) * attention.scale for w in weights]
        else:
            # The key bias is dropped (softmax ignores a constant added to a row of scores); the
            # value bias goes through the attention unchanged (each row of weights sums to 1),
            # into `proj`, below.
            weights = weights[:1]
        getattr(folded_attention, projection.linear).set_weights(weights)
    kernel, bias = (w.astype(np.float64) for w in attention.proj.get_weights())
    if attention.qkv_bias:
        _, value_bias = getattr(attention, VALUE.linear).get_weights()
        bias = bias + value_bias.astype(np.float64) @ kernel
    folded_attention.proj.set_weights([kernel, bias])
    kernel, bias = block.fc1.get_weights()
    folded.fc1.set_weights([kernel * QUICK_GELU_FACTOR, bias * QUICK_GELU_FACTOR])
    kernel, bias = block.fc2.get_weights()
    folded.fc2.set_weights([kernel / QUICK_GELU_FACTOR, bias])
