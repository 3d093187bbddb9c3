"""The public layers one by one: shapes, configs, and numbers against NumPy/PyTorch references."""

import inspect
import re

import keras
import numpy as np
import pytest
import torch

from keras_cvt import (
    ClassToken,
    ConvAttention,
    ConvEmbedding,
    CvTBlock,
    LayerNorm,
    StochasticDepth,
)
from keras_cvt.layers import NORM_EPSILON, convolve, quick_gelu, symmetric_pad


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _torch_conv_size(size, kernel, stride, padding):
    """What PyTorch's Conv2d (the original's semantics) gives for one spatial size."""
    x = torch.zeros(1, 1, size, size)
    return torch.nn.functional.conv2d(x, torch.zeros(1, 1, kernel, kernel), stride=stride, padding=padding).shape[-1]


def _randomize(layer, seed):
    """Gives every variable random values of a visible size (variances positive)."""
    rng = np.random.RandomState(seed)
    for variable in layer.weights:
        shape = tuple(variable.shape)
        if "moving_variance" in variable.path:
            value = rng.uniform(0.5, 2.0, shape)
        elif "gamma" in variable.path:
            value = rng.uniform(0.5, 1.5, shape)
        else:
            value = rng.normal(0.0, 0.3, shape)
        variable.assign(value.astype(variable.dtype))


def _constructor_args(layer_class):
    return [
        name
        for name, p in inspect.signature(layer_class.__init__).parameters.items()
        if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    ]


def _check_config_roundtrip(layer, kwargs, call):
    """get_config echoes every constructor argument; from_config rebuilds an equal layer."""
    config = layer.get_config()
    for name in _constructor_args(type(layer)):
        assert name in config, f"get_config() of {type(layer).__name__} lacks {name!r}"
    for name, value in kwargs.items():
        assert config[name] == value, name
    rebuilt = type(layer).from_config(config)
    assert rebuilt.get_config() == config
    expected = call(layer)
    call(rebuilt)  # builds it
    assert len(rebuilt.weights) == len(layer.weights)
    rebuilt.set_weights(layer.get_weights())
    for a, b in zip(keras.tree.flatten(expected), keras.tree.flatten(call(rebuilt))):
        np.testing.assert_allclose(_np(a), _np(b), rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# NumPy reference of the original attention (cls_cvt.py `Attention` with method dw_bn).
# ---------------------------------------------------------------------------------------------


def _np_depthwise(x, kernel, stride, padding):
    """x (B, H, W, C), kernel (k, k, C, 1); symmetric zero padding as PyTorch's Conv2d."""
    x = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    k = kernel.shape[0]
    out_h = (x.shape[1] - k) // stride + 1
    out_w = (x.shape[2] - k) // stride + 1
    out = np.zeros((x.shape[0], out_h, out_w, x.shape[3]))
    for i in range(k):
        for j in range(k):
            out += x[:, i : i + stride * out_h : stride, j : j + stride * out_w : stride, :] * kernel[i, j, :, 0]
    return out


def _np_batch_norm(x, bn):
    gamma, beta, mean, var = (v.astype("float64") for v in bn.get_weights())
    return (x - mean) / np.sqrt(var + NORM_EPSILON) * gamma + beta


def _np_dense(x, dense):
    weights = [w.astype("float64") for w in dense.get_weights()]
    out = x @ weights[0]
    return out + weights[1] if len(weights) > 1 else out


def _np_layer_norm(x, norm):
    gamma, beta = (w.astype("float64") for w in norm.get_weights())
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + NORM_EPSILON) * gamma + beta


def _np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _np_attention(layer, tokens, height, width, scale=None):
    tokens = tokens.astype("float64")
    batch, dim, heads = tokens.shape[0], layer.dim, layer.num_heads
    scale = dim**-0.5 if scale is None else scale
    if layer.with_cls_token:
        cls_token, tokens = tokens[:, :1], tokens[:, 1:]
    x_map = tokens.reshape(batch, height, width, dim)
    qkv = []
    for conv, batch_norm, projection, stride in (
        (layer.conv_proj_q, layer.conv_proj_q_bn, layer.proj_q, layer.q_stride),
        (layer.conv_proj_k, layer.conv_proj_k_bn, layer.proj_k, layer.kv_stride),
        (layer.conv_proj_v, layer.conv_proj_v_bn, layer.proj_v, layer.kv_stride),
    ):
        t = _np_depthwise(x_map, conv.get_weights()[0].astype("float64"), stride, layer.attention_padding)
        t = _np_batch_norm(t, batch_norm).reshape(batch, -1, dim)
        if layer.with_cls_token:
            t = np.concatenate([cls_token, t], axis=1)
        t = _np_dense(t, projection)
        qkv.append(t.reshape(batch, -1, heads, dim // heads).transpose(0, 2, 1, 3))
    q, k, v = qkv
    weights = _np_softmax(q @ k.transpose(0, 1, 3, 2) * scale)
    out = (weights @ v).transpose(0, 2, 1, 3).reshape(batch, -1, dim)
    return _np_dense(out, layer.proj)


# ---------------------------------------------------------------------------------------------
# quick_gelu
# ---------------------------------------------------------------------------------------------


def test_quick_gelu_is_x_sigmoid_1702x():
    x = np.linspace(-6, 6, 101).astype("float32")
    expected = x / (1.0 + np.exp(-1.702 * x.astype("float64")))
    np.testing.assert_allclose(_np(quick_gelu(x)), expected, rtol=1e-5, atol=1e-6)
    # It is not exact GELU (what HF transformers uses): they differ by ~4e-3 at x = 1.
    exact_gelu = _np(keras.activations.gelu(np.float32([1.0]), approximate=False))[0]
    assert abs(_np(quick_gelu(np.float32([1.0])))[0] - exact_gelu) > 3e-3


# ---------------------------------------------------------------------------------------------
# ConvEmbedding
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "height, width, kernel, stride, padding",
    [
        (224, 224, 7, 4, 2),  # CvT stage 0
        (97, 131, 7, 4, 2),  # odd sizes
        (64, 80, 7, 4, 2),  # even, non-square
        (56, 56, 3, 2, 1),  # stage 1/2
        (15, 8, 3, 2, 1),  # odd height, even width
        (3, 3, 7, 4, 2),  # smallest input that still leaves a token
    ],
)
def test_conv_embedding_output_size_is_pytorch_conv_size(height, width, kernel, stride, padding):
    layer = ConvEmbedding(8, kernel, stride, padding)
    out = layer(np.zeros((2, height, width, 3), "float32"))
    expected = (
        2,
        _torch_conv_size(height, kernel, stride, padding),
        _torch_conv_size(width, kernel, stride, padding),
        8,
    )
    assert tuple(out.shape) == expected
    assert layer.compute_output_shape((2, height, width, 3)) == expected
    symbolic = ConvEmbedding(8, kernel, stride, padding)(keras.Input((height, width, 3)))
    assert tuple(symbolic.shape) == (None,) + expected[1:]
    assert tuple(ConvEmbedding(8, kernel, stride, padding)(keras.Input((None, None, 3))).shape) == (
        None,
        None,
        None,
        8,
    )


@pytest.mark.parametrize("height, width", [(23, 30), (24, 32)])
def test_conv_embedding_matches_pytorch_conv_and_layer_norm(height, width):
    """Symmetric padding: the same numbers as PyTorch's Conv2d(padding=2) + LayerNorm."""
    layer = ConvEmbedding(6, 7, 4, 2)
    x = np.random.RandomState(0).normal(size=(2, height, width, 3)).astype("float32")
    layer(x)
    _randomize(layer, 1)
    kernel, bias, gamma, beta = layer.get_weights()
    ref = torch.nn.functional.conv2d(
        torch.from_numpy(x.transpose(0, 3, 1, 2)),
        torch.from_numpy(kernel.transpose(3, 2, 0, 1)),
        torch.from_numpy(bias),
        stride=4,
        padding=2,
    ).permute(0, 2, 3, 1)
    ref = torch.nn.functional.layer_norm(ref, (6,), torch.from_numpy(gamma), torch.from_numpy(beta), eps=1e-5)
    out = _np(layer(x))
    assert out.shape == tuple(ref.shape)
    np.testing.assert_allclose(out, ref.numpy(), rtol=0, atol=1e-5)


def test_conv_embedding_padding_is_not_keras_same():
    """At 24x32 Keras' padding="same" gives the same output size but shifted windows."""
    layer = ConvEmbedding(6, 7, 4, 2)
    x = np.random.RandomState(0).normal(size=(1, 24, 32, 3)).astype("float32")
    layer(x)
    _randomize(layer, 1)
    same = keras.layers.Conv2D(6, 7, strides=4, padding="same")
    same.build(x.shape)
    same.set_weights(layer.proj.get_weights())
    ours = _np(layer.proj(symmetric_pad(x, 2)))
    shifted = _np(same(x))
    assert ours.shape == shifted.shape == (1, 6, 8, 6)
    assert np.abs(ours - shifted).max() > 1e-2


def test_conv_embedding_refuses_a_map_too_small_for_its_kernel():
    layer = ConvEmbedding(16, 7, 4, 2, name="embedding")
    assert layer(np.zeros((1, 3, 3, 3), "float32")).shape == (1, 1, 1, 16)
    with pytest.raises(ValueError, match=re.escape(
        "The input of `embedding` has width 2, too small for its 7x7 kernel with padding 2: it needs at least 3"
    )):
        layer(np.zeros((1, 3, 2, 3), "float32"))


def test_conv_embedding_config_roundtrip():
    kwargs = {"embed_dim": 12, "kernel_size": 5, "strides": 3, "padding": 1}
    layer = ConvEmbedding(**kwargs, name="embed")
    x = np.random.RandomState(0).normal(size=(2, 17, 20, 4)).astype("float32")
    layer(x)
    _randomize(layer, 2)
    _check_config_roundtrip(layer, kwargs, lambda l: l(x))
    assert layer.get_config()["name"] == "embed"


# ---------------------------------------------------------------------------------------------
# ConvAttention
# ---------------------------------------------------------------------------------------------


def _attention_input(batch, height, width, dim, with_cls_token, seed=0):
    tokens = height * width + int(with_cls_token)
    return np.random.RandomState(seed).normal(size=(batch, tokens, dim)).astype("float32")


@pytest.mark.parametrize("with_cls_token", [False, True])
@pytest.mark.parametrize("height, width", [(7, 9), (8, 6), (1, 1)])
def test_conv_attention_output_shape(with_cls_token, height, width):
    layer = ConvAttention(12, 3, with_cls_token=with_cls_token)
    x = _attention_input(2, height, width, 12, with_cls_token)
    out = layer(x, height=height, width=width)
    assert tuple(out.shape) == x.shape
    assert layer.compute_output_shape(x.shape) == x.shape


@pytest.mark.parametrize("kv_stride", [1, 2, 3])
@pytest.mark.parametrize("height, width", [(7, 9), (8, 6)])
def test_conv_attention_strided_key_value_maps(kv_stride, height, width):
    layer = ConvAttention(12, 3, kv_stride=kv_stride)
    x = _attention_input(2, height, width, 12, False)
    layer(x, height=height, width=width)
    x_map = x.reshape(2, height, width, 12)
    expected = _torch_conv_size(height, 3, kv_stride, 1) * _torch_conv_size(width, 3, kv_stride, 1)
    for conv in (layer.conv_proj_k, layer.conv_proj_v):
        out = convolve(conv, x_map, layer.attention_padding)
        assert int(np.prod(out.shape[1:3])) == expected and out.shape[-1] == 12
    assert tuple(convolve(layer.conv_proj_q, x_map, layer.attention_padding).shape) == (2, height, width, 12)


def test_conv_attention_num_heads_must_divide_dim():
    with pytest.raises(ValueError, match="num_heads"):
        ConvAttention(10, 3)
    assert ConvAttention(12, 3).num_heads == 3


@pytest.mark.parametrize("with_cls_token", [False, True])
@pytest.mark.parametrize("kv_stride", [2, 1])
def test_conv_attention_matches_numpy_reference(with_cls_token, kv_stride):
    dim, heads, height, width = 12, 3, 5, 7
    layer = ConvAttention(dim, heads, with_cls_token=with_cls_token, kv_stride=kv_stride)
    x = _attention_input(2, height, width, dim, with_cls_token, seed=3)
    layer(x, height=height, width=width)
    _randomize(layer, 4)
    assert layer.scale == pytest.approx(dim**-0.5)
    out = _np(layer(x, height=height, width=width))
    expected = _np_attention(layer, x, height, width)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)
    # The full-width scale matters: the per-head scale of standard attention is far off.
    head_scaled = _np_attention(layer, x, height, width, scale=(dim // heads) ** -0.5)
    assert np.abs(head_scaled - expected).max() > 1e-2


def test_conv_attention_uses_batch_statistics_only_when_training():
    layer = ConvAttention(8, 2)
    x = _attention_input(4, 6, 6, 8, False)
    layer(x, height=6, width=6)
    _randomize(layer, 5)
    moving_mean = _np(layer.conv_proj_q_bn.moving_mean).copy()
    inference = _np(layer(x, height=6, width=6, training=False))
    np.testing.assert_array_equal(_np(layer.conv_proj_q_bn.moving_mean), moving_mean)
    training = _np(layer(x, height=6, width=6, training=True))
    assert np.abs(_np(layer.conv_proj_q_bn.moving_mean) - moving_mean).max() > 1e-4
    assert np.abs(training - inference).max() > 1e-3


# Every argument away from its default (also used for the folded form's test).
ATTENTION_CONFIG = {
    "dim": 8,
    "num_heads": 2,
    "with_cls_token": True,
    "attention_kernel_size": 5,
    "q_stride": 1,
    "kv_stride": 3,
    "attention_padding": 2,
    "qkv_bias": False,
}


def test_conv_attention_config_roundtrip():
    kwargs = ATTENTION_CONFIG
    layer = ConvAttention(**kwargs)
    x = _attention_input(2, 7, 5, 8, True)
    layer(x, height=7, width=5)
    _randomize(layer, 6)
    assert layer.proj_q.bias is None and layer.proj.bias is not None
    _check_config_roundtrip(layer, kwargs, lambda l: l(x, height=7, width=5))


def test_conv_attention_takes_the_old_names_of_its_options():
    # keras_cvt 0.2 called them `kernel_size` and `padding`, in its constructor and configs.
    old = {**ATTENTION_CONFIG, "kernel_size": 5, "padding": 2, "name": "attn"}
    del old["attention_kernel_size"], old["attention_padding"]
    for layer in (ConvAttention(**old), ConvAttention.from_config(old)):
        assert (layer.attention_kernel_size, layer.attention_padding) == (5, 2)
        assert (layer.kernel_size, layer.padding) == (5, 2)
        assert layer.get_config() == ConvAttention(**ATTENTION_CONFIG, name="attn").get_config()
    with pytest.raises(ValueError, match="`kernel_size` is the old name of `attention_kernel_size`"):
        ConvAttention(8, 2, kernel_size=5, attention_kernel_size=7)


def test_conv_attention_weight_paths_are_those_of_the_weight_files():
    # .weights.h5 files and the converter's variable map address the variables by these paths.
    layer = ConvAttention(8, 2, name="attn")
    layer(_attention_input(1, 4, 4, 8, False), height=4, width=4)
    paths = [v.path for v in layer.weights]
    expected = []
    for part in "qkv":
        expected += [f"attn/conv_proj_{part}/kernel"]
        expected += [f"attn/conv_proj_{part}_bn/{name}" for name in ("gamma", "beta", "moving_mean", "moving_variance")]
        expected += [f"attn/proj_{part}/kernel", f"attn/proj_{part}/bias"]
    assert paths == expected + ["attn/proj/kernel", "attn/proj/bias"]


# ---------------------------------------------------------------------------------------------
# CvTBlock
# ---------------------------------------------------------------------------------------------


def _np_block(block, x_map, cls_token=None):
    batch, height, width, dim = x_map.shape
    x = x_map.reshape(batch, -1, dim).astype("float64")
    if cls_token is not None:
        x = np.concatenate([cls_token, x], axis=1)
    x = x + _np_attention(block.attn, _np_layer_norm(x, block.norm1), height, width)
    hidden = _np_dense(_np_layer_norm(x, block.norm2), block.fc1)
    x = x + _np_dense(hidden / (1.0 + np.exp(-1.702 * hidden)), block.fc2)
    if cls_token is None:
        return x.reshape(batch, height, width, dim)
    return x[:, 1:].reshape(batch, height, width, dim), x[:, :1]


@pytest.mark.parametrize("height, width", [(7, 9), (4, 4)])
def test_cvt_block_shapes_and_numbers_without_class_token(height, width):
    block = CvTBlock(12, 3, mlp_ratio=2.0)
    x = np.random.RandomState(0).normal(size=(2, height, width, 12)).astype("float32")
    out = block(x)
    assert tuple(out.shape) == x.shape
    assert tuple(block(keras.Input((None, None, 12))).shape) == (None, None, None, 12)
    assert tuple(block.fc1.kernel.shape) == (12, 24)
    _randomize(block, 7)
    np.testing.assert_allclose(_np(block(x)), _np_block(block, x), rtol=0, atol=1e-4)


def test_cvt_block_shapes_and_numbers_with_class_token():
    block = CvTBlock(12, 3, with_cls_token=True)
    rng = np.random.RandomState(1)
    x = rng.normal(size=(2, 5, 7, 12)).astype("float32")
    cls_token = rng.normal(size=(2, 1, 12)).astype("float32")
    out_map, out_cls = block([x, cls_token])
    assert tuple(out_map.shape) == (2, 5, 7, 12) and tuple(out_cls.shape) == (2, 1, 12)
    symbolic = block([keras.Input((5, 7, 12)), keras.Input((1, 12))])
    assert [tuple(t.shape) for t in symbolic] == [(None, 5, 7, 12), (None, 1, 12)]
    _randomize(block, 8)
    expected_map, expected_cls = _np_block(block, x, cls_token)
    out_map, out_cls = block([x, cls_token])
    np.testing.assert_allclose(_np(out_map), expected_map, rtol=0, atol=1e-4)
    np.testing.assert_allclose(_np(out_cls), expected_cls, rtol=0, atol=1e-4)


def test_cvt_block_drop_path_only_acts_in_training():
    block = CvTBlock(8, 2, drop_path_rate=0.5)
    assert block.drop_path.rate == 0.5
    x = np.random.RandomState(2).normal(size=(64, 4, 4, 8)).astype("float32")
    block(x)
    _randomize(block, 9)
    plain = CvTBlock(8, 2)
    plain(x)
    plain.set_weights(block.get_weights())
    np.testing.assert_allclose(_np(block(x)), _np(plain(x)), rtol=0, atol=1e-6)
    # Training: with rate 0.5 over 64 samples, some samples lose a branch; the BatchNorm
    # batch statistics apply to both, so compare with the rate-0 block in training mode.
    trained = _np(block(x, training=True))
    reference = _np(plain(x, training=True))
    per_sample = np.abs(trained - reference).reshape(64, -1).max(-1)
    assert (per_sample > 1e-3).sum() >= 32


def test_cvt_block_config_roundtrip():
    kwargs = {
        "dim": 8,
        "num_heads": 4,
        "mlp_ratio": 3.0,
        "drop_path_rate": 0.2,
        "with_cls_token": True,
        "attention_kernel_size": 5,
        "q_stride": 1,
        "kv_stride": 3,
        "attention_padding": 2,
        "qkv_bias": False,
    }
    block = CvTBlock(**kwargs)
    attention = block.attn
    assert (attention.attention_kernel_size, attention.q_stride, attention.kv_stride, attention.attention_padding) == (5, 1, 3, 2)
    assert not attention.qkv_bias
    rng = np.random.RandomState(3)
    inputs = [rng.normal(size=(2, 3, 5, 8)).astype("float32"), rng.normal(size=(2, 1, 8)).astype("float32")]
    block(inputs)
    _randomize(block, 10)
    _check_config_roundtrip(block, kwargs, lambda l: l(inputs))


# ---------------------------------------------------------------------------------------------
# LayerNorm
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 5, 16), (7, 64), (1, 3, 4, 24)])
def test_layer_norm_matches_torch_and_keras(shape):
    rng = np.random.RandomState(0)
    # A large mean against a small spread: a one-pass E[x^2] - E[x]^2 variance would fail here.
    x = (rng.normal(size=shape) * 0.5 + 20.0).astype("float32")
    layer = LayerNorm()
    layer.build(shape)
    _randomize(layer, 1)
    gamma, beta = layer.get_weights()
    want = torch.nn.functional.layer_norm(
        torch.from_numpy(x), (shape[-1],), torch.from_numpy(gamma), torch.from_numpy(beta), eps=1e-5
    ).numpy()
    out = _np(layer(x))
    assert out.dtype == np.float32 and out.shape == shape
    np.testing.assert_allclose(out, want, atol=2e-5, rtol=1e-5)
    keras_layer = keras.layers.LayerNormalization(epsilon=NORM_EPSILON)
    keras_layer.build(shape)
    keras_layer.set_weights([gamma, beta])
    np.testing.assert_allclose(out, _np(keras_layer(x)), atol=2e-5, rtol=1e-5)


def test_layer_norm_reduced_precision_keeps_float32_statistics():
    x = np.random.RandomState(0).normal(size=(4, 32)).astype("float32") * 3.0 + 1.0
    layer = LayerNorm(dtype="mixed_bfloat16")
    out = layer(x)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    assert layer.gamma.dtype == "float32"
    reference = _np(LayerNorm()(x))
    # Only the output's rounding to bfloat16 (8-bit mantissa) differs.
    np.testing.assert_allclose(_np(keras.ops.cast(out, "float32")), reference, atol=2e-2, rtol=1e-2)


def test_layer_norm_config_roundtrip_and_weights_layout():
    layer = LayerNorm(name="norm")
    layer.build((None, 6))
    config = layer.get_config()
    assert config["epsilon"] == NORM_EPSILON and config["name"] == "norm"
    assert [v.path for v in layer.weights] == ["norm/gamma", "norm/beta"]
    rebuilt = LayerNorm.from_config(config)
    assert rebuilt.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is LayerNorm


@pytest.mark.parametrize("kwargs", [{"axis": 1}, {"center": False}, {"scale": False}])
def test_layer_norm_rejects_other_forms(kwargs):
    with pytest.raises(ValueError, match="axis=-1"):
        LayerNorm(**kwargs)


# ---------------------------------------------------------------------------------------------
# StochasticDepth
# ---------------------------------------------------------------------------------------------


def test_stochastic_depth_is_identity_at_inference():
    layer = StochasticDepth(0.5, seed=0)
    x = np.random.RandomState(0).normal(size=(16, 3, 4)).astype("float32")
    np.testing.assert_array_equal(_np(layer(x)), x)
    np.testing.assert_array_equal(_np(layer(x, training=False)), x)
    np.testing.assert_array_equal(_np(StochasticDepth(0.0)(x, training=True)), x)
    assert layer.compute_output_shape((16, 3, 4)) == (16, 3, 4)


def test_stochastic_depth_drops_whole_samples_and_rescales():
    rate, batch = 0.25, 4000
    keep = 1.0 - rate
    x = np.random.RandomState(0).uniform(1.0, 2.0, size=(batch, 3, 5)).astype("float32")
    out = _np(StochasticDepth(rate, seed=42)(x, training=True))
    ratio = (out / x).reshape(batch, -1)
    kept = ratio[:, 0] != 0
    # Every sample is either dropped as a whole or kept as a whole and scaled by 1/keep.
    np.testing.assert_array_equal(ratio[~kept], 0.0)
    np.testing.assert_allclose(ratio[kept], 1.0 / keep, rtol=1e-6)
    # The kept fraction is Binomial(4000, 0.75)/4000: std 0.007, so 0.03 is > 4 sigma.
    assert abs(kept.mean() - keep) < 0.03
    assert abs(out.mean() / x.mean() - 1.0) < 0.04
    # A fixed seed gives the same draw again.
    np.testing.assert_array_equal(_np(StochasticDepth(rate, seed=42)(x, training=True)), out)


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_stochastic_depth_invalid_rate(rate):
    with pytest.raises(ValueError, match="rate"):
        StochasticDepth(rate)


def test_stochastic_depth_config_roundtrip():
    layer = StochasticDepth(0.3, seed=7, name="dp")
    config = layer.get_config()
    assert config["rate"] == 0.3 and config["seed"] == 7 and config["name"] == "dp"
    assert set(_constructor_args(StochasticDepth)) <= set(config)
    rebuilt = StochasticDepth.from_config(config)
    assert rebuilt.get_config() == config
    x = np.random.RandomState(0).normal(size=(200, 4)).astype("float32")
    # Same seed, same config: the rebuilt layer draws the same samples.
    np.testing.assert_array_equal(_np(layer(x, training=True)), _np(rebuilt(x, training=True)))


# ---------------------------------------------------------------------------------------------
# ClassToken
# ---------------------------------------------------------------------------------------------


def test_class_token_repeats_the_token_per_sample():
    layer = ClassToken(8)
    x = np.zeros((3, 5, 7, 8), "float32")
    out = layer(x)
    assert tuple(out.shape) == (3, 1, 8)
    assert tuple(layer.token.shape) == (1, 1, 8) and layer.token.trainable
    token = np.random.RandomState(0).normal(size=(1, 1, 8)).astype("float32")
    layer.token.assign(token)
    np.testing.assert_array_equal(_np(layer(x)), np.repeat(token, 3, axis=0))
    assert tuple(layer(keras.Input((None, None, 8))).shape) == (None, 1, 8)
    assert layer.compute_output_shape((None, 4, 4, 8)) == (None, 1, 8)
    assert layer.count_params() == 8


def test_class_token_config_roundtrip():
    layer = ClassToken(6, name="cls")
    x = np.zeros((2, 3, 3, 6), "float32")
    layer(x)
    _randomize(layer, 11)
    _check_config_roundtrip(layer, {"dim": 6}, lambda l: l(x))
