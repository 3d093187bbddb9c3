"""keras_cvt.inference.layers: the folded layers one by one (their numbers against the training
layers, through `optimize_for_inference`, are in test_inference.py and test_attention_options.py)."""

import keras
import numpy as np
import pytest

from keras_cvt.inference.layers import FoldedConvAttention, FoldedCvTBlock
from tests.test_layers import ATTENTION_CONFIG, _check_config_roundtrip, _np, _randomize


@pytest.mark.parametrize("heads", [3, 1])
def test_heads_come_batch_first(heads):
    """q, k and v as `(batch, heads, tokens, head_dim)`: a Dense layer's output column
    h * head_dim + j is head h's feature j, as the original splits it."""
    dim, batch, tokens = 6, 2, 5
    attention = FoldedConvAttention(dim, heads)
    x = np.random.RandomState(3).normal(size=(batch, tokens, dim)).astype("float32")
    attention.build((None, None, dim))
    _randomize(attention, 4)
    out = _np(attention._heads(attention.proj_q, x))
    kernel, bias = (_np(w).astype("float64") for w in attention.proj_q.weights)
    expected = (x.astype("float64") @ kernel + bias).reshape(batch, tokens, heads, dim // heads)
    np.testing.assert_allclose(out, expected.transpose(0, 2, 1, 3), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "options, kernels, paddings",
    [
        # The published options: the strided k/v kernels one larger, "same".
        ({}, (3, 4, 4), ("same", "same", "same")),
        ({"kv_stride": 1}, (3, 3, 3), ("same", "same", "same")),
        # Stride 3: "same" would place the windows otherwise; the map is padded instead.
        ({"attention_kernel_size": 5, "attention_padding": 2, "kv_stride": 3}, (5, 5, 5), ("same", "valid", "valid")),
        # Padding that is not (kernel - 1) / 2: never "same".
        ({"attention_kernel_size": 3, "attention_padding": 0, "kv_stride": 2}, (3, 3, 3), ("valid", "valid", "valid")),
    ],
)
def test_folded_attention_convolutions(options, kernels, paddings):
    layer = FoldedConvAttention(12, 3, **options)
    convs = (layer.conv_proj_q, layer.conv_proj_k, layer.conv_proj_v)
    assert tuple(c.kernel_size[0] for c in convs) == kernels
    assert tuple(c.padding for c in convs) == paddings
    assert all(c.use_bias for c in convs)


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_folded_attention_weights(qkv_bias):
    layer = FoldedConvAttention(12, 3, with_cls_token=True, qkv_bias=qkv_bias, name="attn")
    x = np.random.RandomState(0).normal(size=(2, 1 + 5 * 7, 12)).astype("float32")
    out = layer(x, height=5, width=7)
    assert tuple(out.shape) == x.shape
    paths = {v.path for v in layer.weights}
    assert not any("_bn/" in p for p in paths)
    assert ("attn/proj_q/bias" in paths) == qkv_bias
    assert "attn/proj_k/bias" not in paths and "attn/proj_v/bias" not in paths
    assert tuple(layer.proj_k.kernel.shape) == tuple(layer.proj_v.kernel.shape) == (12, 12)


def test_folded_attention_config_roundtrip():
    kwargs = ATTENTION_CONFIG
    layer = FoldedConvAttention(**kwargs)
    x = np.random.RandomState(1).normal(size=(2, 1 + 7 * 5, 8)).astype("float32")
    layer(x, height=7, width=5)
    _randomize(layer, 2)
    _check_config_roundtrip(layer, kwargs, lambda l: l(x, height=7, width=5))


def test_folded_block_config_roundtrip_and_activation():
    kwargs = {
        "dim": 8,
        "num_heads": 4,
        "mlp_ratio": 3.0,
        "drop_path_rate": 0.0,
        "with_cls_token": False,
        "attention_kernel_size": 3,
        "q_stride": 1,
        "kv_stride": 2,
        "attention_padding": 1,
        "qkv_bias": True,
    }
    block = FoldedCvTBlock(**kwargs)
    assert isinstance(block.attn, FoldedConvAttention)
    hidden = np.linspace(-3, 3, 13).astype("float32")
    np.testing.assert_allclose(_np(block.activation(hidden)), hidden / (1 + np.exp(-hidden)), atol=1e-6)
    x = np.random.RandomState(3).normal(size=(2, 3, 5, 8)).astype("float32")
    block(x)
    _randomize(block, 4)
    _check_config_roundtrip(block, kwargs, lambda l: l(x))
    assert keras.saving.get_registered_name(FoldedCvTBlock) == "keras_cvt>FoldedCvTBlock"


def test_a_class_token_only_block_is_the_full_block_on_its_class_token():
    kwargs = {"dim": 12, "num_heads": 3, "with_cls_token": True}
    full, alone = FoldedCvTBlock(**kwargs), FoldedCvTBlock(**kwargs, class_token_only=True)
    rng = np.random.RandomState(11)
    x_map = rng.normal(size=(2, 5, 7, 12)).astype("float32")
    cls_token = rng.normal(size=(2, 1, 12)).astype("float32")
    full([x_map, cls_token])
    _randomize(full, 12)
    alone([x_map, cls_token])
    alone.set_weights(full.get_weights())
    (full_map, full_cls), (same_map, cls_out) = full([x_map, cls_token]), alone([x_map, cls_token])
    np.testing.assert_allclose(_np(cls_out), _np(full_cls), rtol=0, atol=1e-5)
    # The map is not computed: it comes out as it came in, which the full block changes.
    np.testing.assert_array_equal(_np(same_map), x_map)
    assert np.abs(_np(full_map) - x_map).max() > 0.1
    assert alone.compute_output_shape([x_map.shape, cls_token.shape]) == [x_map.shape, cls_token.shape]
    assert alone.attn.compute_output_shape((2, 36, 12)) == (2, 1, 12)
    _check_config_roundtrip(alone, {**kwargs, "class_token_only": True}, lambda l: l([x_map, cls_token]))


@pytest.mark.parametrize("layer", [FoldedCvTBlock, FoldedConvAttention])
def test_class_token_only_needs_a_class_token(layer):
    with pytest.raises(ValueError, match="`class_token_only`=True needs a class token"):
        layer(12, 3, class_token_only=True)
