"""The attention options of `keras_cvt.CvT` (kernel size, strides, padding, q/k/v bias): checked
as arguments, built into every block, folded by `optimize_for_inference`, and followed by the
converter's expected shapes and variable map."""

import keras
import numpy as np
import pytest
from safetensors.numpy import save_file

from keras_cvt import CvT, architectures, optimize_for_inference
from keras_cvt.inference.layers import FoldedCvTBlock
from keras_cvt.layers import ATTENTION_KERNEL_SIZE, KV_STRIDE, QKV_BIAS, CvTBlock
from tests.conftest import TINY_CONFIG
from keras_cvt.conversion import convert
from keras_cvt.conversion.mapping import expected_shapes, infer_config, torch_shape, variable_map

# (CvT arguments, depthwise kernel size of the training form, of the folded strided k/v)
OPTIONS = {
    "defaults": ({}, 3, 4),
    "kernel5_stride3_no_bias": (
        {"attention_kernel_size": 5, "attention_padding": 2, "kv_stride": 3, "qkv_bias": False},
        5,
        5,
    ),
    "kernel1_stride1": ({"attention_kernel_size": 1, "attention_padding": 0, "kv_stride": 1}, 1, 1),
    "stride2_no_bias": ({"qkv_bias": False}, 3, 4),
}


def _tiny(input_shape=(None, None, 3), **options):
    return CvT(**TINY_CONFIG, input_shape=input_shape, include_preprocessing=False, **options)


def _blocks(model, block_class=CvTBlock):
    return [layer for layer in model.layers if isinstance(layer, block_class)]


def _randomize(model, seed):
    rng = np.random.RandomState(seed)
    for variable in model.weights:
        if "moving_variance" in variable.path:
            value = rng.uniform(0.5, 2.0, variable.shape)
        else:
            value = rng.normal(0.0, 0.2, variable.shape)
        variable.assign(value.astype(variable.dtype))


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"attention_kernel_size": 3.0}, TypeError, "`attention_kernel_size` must be an integer"),
        ({"attention_kernel_size": 0}, ValueError, "`attention_kernel_size` must be an integer >= 1"),
        ({"q_stride": "1"}, TypeError, "`q_stride` must be an integer"),
        ({"q_stride": 2}, ValueError, "`q_stride` must be 1"),
        ({"kv_stride": 0}, ValueError, "`kv_stride` must be an integer >= 1"),
        ({"kv_stride": True}, TypeError, "`kv_stride` must be an integer"),
        ({"attention_padding": -1}, ValueError, "`attention_padding` must be an integer >= 0"),
        ({"attention_kernel_size": 5}, ValueError, r"`attention_padding` must be \(attention_kernel_size - 1\) / 2"),
        ({"attention_kernel_size": 4, "attention_padding": 1}, ValueError, "odd `attention_kernel_size`"),
        ({"qkv_bias": 1}, TypeError, "`qkv_bias` must be True or False"),
    ],
)
def test_bad_attention_arguments_are_refused_by_name(kwargs, error, message):
    with pytest.raises(error, match=message):
        _tiny(**kwargs)


def test_the_published_variants_keep_the_defaults():
    for variant in architectures.VARIANTS.values():
        assert not {"attention_kernel_size", "q_stride", "kv_stride", "attention_padding", "qkv_bias"} & set(
            variant.config
        ), variant.name
    for block in _blocks(_tiny(input_shape=(64, 64, 3))):
        attention = block.attn
        assert (attention.attention_kernel_size, attention.kv_stride, attention.qkv_bias) == (
            ATTENTION_KERNEL_SIZE,
            KV_STRIDE,
            QKV_BIAS,
        )


@pytest.mark.parametrize("options", sorted(OPTIONS))
def test_every_block_takes_the_options(options):
    kwargs, kernel_size, _ = OPTIONS[options]
    model = _tiny(input_shape=(45, 37, 3), **kwargs)
    blocks = _blocks(model)
    assert len(blocks) == sum(TINY_CONFIG["depths"])
    qkv_bias = kwargs.get("qkv_bias", True)
    for block in blocks:
        attention = block.attn
        for conv in (attention.conv_proj_q, attention.conv_proj_k, attention.conv_proj_v):
            assert conv.kernel.shape[:2] == (kernel_size, kernel_size)
        for projection in (attention.proj_q, attention.proj_k, attention.proj_v):
            assert (projection.bias is not None) == qkv_bias
        assert attention.kv_stride == kwargs.get("kv_stride", 2)
    x = np.random.RandomState(0).uniform(0, 1, (2, 45, 37, 3)).astype("float32")
    assert model.predict(x, verbose=0).shape == (2, TINY_CONFIG["classes"])


@pytest.mark.slow
@pytest.mark.parametrize("options", sorted(OPTIONS))
def test_folded_form_equals_the_training_form(options):
    kwargs, kernel_size, strided_kernel_size = OPTIONS[options]
    model = _tiny(**kwargs)
    _randomize(model, 1)
    folded = optimize_for_inference(model)
    blocks = _blocks(folded, FoldedCvTBlock)
    assert len(blocks) == sum(TINY_CONFIG["depths"])
    for block in blocks:
        attention = block.attn
        assert attention.conv_proj_q.kernel.shape[0] == kernel_size
        assert attention.conv_proj_k.kernel.shape[0] == strided_kernel_size
        assert (attention.proj_q.bias is not None) == kwargs.get("qkv_bias", True)
    rng = np.random.RandomState(2)
    for shape in ((2, 64, 64, 3), (1, 45, 37, 3)):
        x = rng.uniform(0, 1, shape).astype("float32")
        expected = model.predict(x, verbose=0)
        np.testing.assert_allclose(
            folded.predict(x, verbose=0), expected, rtol=0, atol=1e-5 * max(1.0, np.abs(expected).max())
        )


@pytest.mark.parametrize("options", sorted(OPTIONS))
def test_expected_shapes_follow_the_options(options):
    kwargs, kernel_size, _ = OPTIONS[options]
    model = _tiny(**kwargs)
    built = {key: torch_shape(variable, permutation) for key, (variable, permutation) in variable_map(model).items()}
    shapes = expected_shapes({**TINY_CONFIG, **kwargs})
    assert shapes == built
    assert shapes["stage1.blocks.1.attn.conv_proj_k.conv.weight"] == (32, 1, kernel_size, kernel_size)
    biases = [key for key in shapes if key.endswith((".proj_q.bias", ".proj_k.bias", ".proj_v.bias"))]
    assert len(biases) == (3 * sum(TINY_CONFIG["depths"]) if kwargs.get("qkv_bias", True) else 0)


def _checkpoint(model, path):
    """`model`'s weights as an original-code checkpoint (keys and PyTorch layouts)."""
    state = {}
    for key, (variable, permutation) in variable_map(model).items():
        value = keras.ops.convert_to_numpy(variable)
        if permutation is not None:
            value = np.transpose(value, np.argsort(permutation))
        state[key] = np.ascontiguousarray(value, dtype=np.float32)
    save_file(state, str(path))
    return state


@pytest.mark.parametrize("options", ["kernel5_stride3_no_bias", "defaults"])
def test_a_checkpoint_with_other_options_converts(options, tmp_path):
    kwargs, _, _ = OPTIONS[options]
    model = _tiny(**kwargs)
    _randomize(model, 3)
    state = _checkpoint(model, tmp_path / "custom.safetensors")
    _, config = infer_config(state)
    # What the tensors show: the kernel size (and its padding) and the missing biases; the
    # stride leaves no trace in the weights, as heads do not.
    shown = {k: v for k, v in kwargs.items() if k != "kv_stride"}
    assert {k: config[k] for k in shown} == shown
    if not shown:  # the published options: the config is what it always was
        assert not {"attention_kernel_size", "attention_padding", "qkv_bias"} & set(config)
    info = convert(tmp_path / "custom.safetensors", tmp_path / "custom.weights.h5")
    restored = CvT(
        **{**info["config"], **kwargs, "num_heads": TINY_CONFIG["num_heads"]},
        weights=tmp_path / "custom.weights.h5",
        include_preprocessing=False,
        input_shape=(None, None, 3)
    )
    x = np.random.RandomState(4).uniform(0, 1, (2, 48, 40, 3)).astype("float32")
    np.testing.assert_allclose(restored.predict(x, verbose=0), model.predict(x, verbose=0), rtol=0, atol=1e-5)
