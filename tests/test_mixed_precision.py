"""CvT-13 with the reference weights under the mixed float16 / bfloat16 policies.

CvT-13 at 224x224 runs in about a second per policy on a 2-core CPU, so the full model is
used, not the tiny one. Observed max |logit - float32 logit| on the reference input
(logit std 0.39): ~2e-3 under mixed_float16, ~1.5e-2 under mixed_bfloat16 (8-bit mantissa).
"""

import contextlib

import keras
import numpy as np
import pytest

import keras_cvt.layers
from keras_cvt import ConvAttention, CvT13

# Policy -> (compute dtype, max abs difference to the float32 reference logits allowed).
POLICIES = {
    "mixed_float16": ("float16", 1e-2),
    "mixed_bfloat16": ("bfloat16", 5e-2),
}
# Inference softmax dtype: float16 scores can overflow, so they are upcast; bfloat16's are not.
INFERENCE_SOFTMAX = {"float16": "float32", "bfloat16": "bfloat16"}


@contextlib.contextmanager
def global_policy(name):
    """Sets the global dtype policy `name` inside, and restores the one before, however the
    body ends."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


@pytest.fixture(params=sorted(POLICIES))
def policy(request):
    """Sets a global mixed policy for one test."""
    with global_policy(request.param):
        yield request.param


@pytest.fixture
def softmax_spy(monkeypatch):
    """Records the dtype of every tensor the model code passes to `keras.ops.softmax`."""
    seen = []
    original = keras_cvt.layers.ops.softmax

    def spy(x, *args, **kwargs):
        out = original(x, *args, **kwargs)
        seen.append((keras.backend.standardize_dtype(x.dtype), keras.backend.standardize_dtype(out.dtype)))
        return out

    monkeypatch.setattr(keras_cvt.layers.ops, "softmax", spy)
    return seen


def test_cvt13_reference_logits_under_mixed_precision(policy, cvt13_reference, softmax_spy):
    compute_dtype, tolerance = POLICIES[policy]
    path, x, logits = cvt13_reference
    model = CvT13(weights=path, include_preprocessing=False, classifier_activation=None)
    attention = model.get_layer("stage2_block0").attn
    assert attention.compute_dtype == compute_dtype
    assert attention.variable_dtype == "float32"  # the file's float32 weights, kept as is
    assert model.get_layer("predictions").compute_dtype == "float32"

    out = model(x)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    out = keras.ops.convert_to_numpy(out)
    assert out.shape == (2, 1000)
    assert np.isfinite(out).all()
    # One softmax per attention layer (13 blocks).
    softmax_dtype = INFERENCE_SOFTMAX[compute_dtype]
    assert softmax_spy == [(softmax_dtype, softmax_dtype)] * 13
    diff = np.abs(out - logits).max()
    assert diff < tolerance, f"{policy}: max |logits - float32 logits| = {diff:.2e}"
    # It is really reduced precision: the logits are not the float32 ones bit for bit.
    assert diff > 1e-5
    np.testing.assert_array_equal(out.argmax(-1), logits.argmax(-1))


def test_attention_layer_softmax_dtype(policy, softmax_spy):
    """Training always takes the softmax in float32; inference only for float16."""
    compute_dtype, _ = POLICIES[policy]
    layer = ConvAttention(12, 3, with_cls_token=True)
    x = np.random.RandomState(0).normal(size=(2, 1 + 5 * 7, 12)).astype("float32")
    for training in (False, True):
        out = layer(x, height=5, width=7, training=training)
        assert keras.backend.standardize_dtype(out.dtype) == compute_dtype
    assert layer.compute_dtype == compute_dtype
    softmax_dtype = INFERENCE_SOFTMAX[compute_dtype]
    assert softmax_spy == [(softmax_dtype, softmax_dtype), ("float32", "float32")]


def test_policy_is_restored():
    """What the `policy` fixture relies on: the policy before it comes back, also after an
    error, and layers made outside see it."""
    with global_policy("mixed_float16"):
        with global_policy("mixed_bfloat16"):
            assert ConvAttention(4, 2).compute_dtype == "bfloat16"
        assert keras.config.dtype_policy().name == "mixed_float16"
        with pytest.raises(RuntimeError, match="inside"):
            with global_policy("float32"):
                raise RuntimeError("inside")
        assert keras.config.dtype_policy().name == "mixed_float16"
        assert ConvAttention(4, 2).compute_dtype == "float16"
    assert keras.config.dtype_policy().name == "float32"
    assert ConvAttention(4, 2).compute_dtype == "float32"
