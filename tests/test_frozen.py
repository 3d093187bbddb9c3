"""keras_cvt.freeze_for_inference: the model as a TensorFlow graph with constant weights."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_cvt import (
    CvT,
    CvT13,
    FrozenFunction,
    LayerNorm,
    freeze_for_inference,
    optimize_for_inference,
)
from keras_cvt.inference import frozen as frozen_module
from tests.conftest import TINY_CONFIG

# CI and the benchmark machine run TensorFlow's x86 build, where oneDNN is on by default.
FUSED = frozen_module.fused_layer_norm_available()

VARIABLE_OPS = {"VarHandleOp", "ReadVariableOp", "VariableV2", "ResourceGather"}


def _ops(graph_def):
    nodes = list(graph_def.node)
    for function in graph_def.library.function:
        nodes += list(function.node_def)
    return {node.op for node in nodes}


def test_frozen_cvt13_reproduces_the_original_code(cvt13_reference):
    path, x, logits = cvt13_reference
    model = CvT13(weights=path, include_preprocessing=False, classifier_activation=None)
    frozen = freeze_for_inference(optimize_for_inference(model))
    out = frozen(x).numpy()
    assert np.max(np.abs(out - logits)) <= 1e-4
    assert np.max(np.abs(out - model.predict(x, verbose=0))) <= 1e-5
    ops = _ops(frozen.graph_def)
    assert "Const" in ops and not ops & VARIABLE_OPS  # every weight is a constant
    # 3 embeddings, 2 per block in 13 blocks, the head: all 30 run as oneDNN's kernel.
    assert frozen.fused_layer_norms == (30 if FUSED else 0)
    assert (frozen_module.FUSED_LAYER_NORM in ops) == FUSED
    assert not ops & {"Rsqrt", "Square"} if FUSED else {"Rsqrt", "Square"} <= ops
    # q, proj, fc1 and fc2 in 13 blocks, and the classifier: every MatMul weight is read as a
    # non-constant (k and v are batched matmuls, which the rewrite leaves alone).
    assert frozen.plain_layout_matmuls == (53 if FUSED else 0)
    assert _matmul_weight_ops(frozen.graph_def) == {frozen_module.PLAIN_WEIGHT: 53}
    # Keys transposed for the scores in every block; q split into heads and the output merged
    # back, in the 12 multi-head blocks only (stage 1's one head needs reshapes alone).
    transposes = [node.name for node in frozen.graph_def.node if node.op == "Transpose"]
    assert len(transposes) == 13 + 2 * 12
    assert sum("/stage0_block0" in name for name in transposes) == 1


def _matmul_weight_ops(graph_def):
    """How many MatMuls read their weight from each kind of operation."""
    nodes = {node.name: node for node in graph_def.node}
    counts = {}
    for node in graph_def.node:
        if node.op == "MatMul":
            weight = nodes[node.input[1].split(":")[0]]
            if weight.op == frozen_module.PLAIN_WEIGHT:
                assert nodes[weight.input[0]].op == "Const"
            counts[weight.op] = counts.get(weight.op, 0) + 1
    return counts


def test_only_constant_matmul_weights_are_read_as_non_constants():
    inputs = keras.Input((4, 6))
    hidden = keras.layers.Dense(6, name="dense")(keras.ops.reshape(inputs, (-1, 6)))
    tokens = keras.ops.reshape(hidden, (-1, 4, 6))
    # A product of two activations: its second operand is no weight.
    gram = keras.ops.matmul(tokens[0], keras.ops.transpose(tokens[0]))
    model = keras.Model(inputs, [hidden, gram])
    frozen = freeze_for_inference(model)
    assert frozen.plain_layout_matmuls == 1
    counts = _matmul_weight_ops(frozen.graph_def)
    assert counts[frozen_module.PLAIN_WEIGHT] == 1 and sum(counts.values()) == 2
    x = np.random.RandomState(2).normal(size=(3, 4, 6)).astype("float32")
    for got, expected in zip(frozen(x), model.predict(x, verbose=0)):
        np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-5)


def test_fused_layer_norm_is_available_here():
    # The x86 Linux build that CI installs: without oneDNN the fusion tests would test nothing.
    assert FUSED


@pytest.mark.parametrize("shape", [(6,), (5, 6), (3, 4, 6)])
def test_layer_norms_fused_at_any_rank_and_only_ours(shape):
    inputs = keras.Input(shape)
    hidden = keras.layers.Dense(6, name="dense")(inputs)
    ours = keras.Model(inputs, LayerNorm(name="norm")(hidden))
    keras_form = keras.Model(inputs, keras.layers.LayerNormalization(epsilon=1e-5)(hidden))
    rng = np.random.RandomState(0)
    ours.get_layer("norm").set_weights([rng.normal(size=6), rng.normal(size=6)])
    keras_form.layers[-1].set_weights(ours.get_layer("norm").get_weights())
    x = rng.normal(size=(2,) + shape).astype("float32")
    frozen = freeze_for_inference(ours)
    assert frozen.fused_layer_norms == 1
    np.testing.assert_allclose(frozen(x).numpy(), ours.predict(x, verbose=0), rtol=0, atol=1e-5)
    # Keras' own form is another graph: left as it is, still correct.
    frozen_keras = freeze_for_inference(keras_form)
    assert frozen_keras.fused_layer_norms == 0
    expected = ours.predict(x, verbose=0)
    np.testing.assert_allclose(frozen_keras(x).numpy(), expected, rtol=0, atol=1e-5)


def _fused_layer_norm_dtypes(graph_def):
    return sorted(
        tf.as_dtype(node.attr["T"].type).name
        for node in graph_def.node
        if node.op == frozen_module.FUSED_LAYER_NORM
    )


def test_bfloat16_layer_norm_fused_in_bfloat16():
    inputs = keras.Input((5, 6))
    hidden = keras.layers.Dense(6, dtype="mixed_bfloat16", name="dense")(inputs)
    # bfloat16 in and out (statistics in float32): the kernel's bfloat16 form, no casts.
    narrow = LayerNorm(dtype="mixed_bfloat16", name="narrow")
    # bfloat16 in, float32 out: the float32 kernel on the tokens cast up.
    wide = LayerNorm(dtype="float32", name="wide")
    model = keras.Model(inputs, [narrow(hidden), wide(hidden)])
    rng = np.random.RandomState(3)
    for norm in (narrow, wide):
        norm.set_weights([rng.normal(size=6), rng.normal(size=6)])
    frozen = freeze_for_inference(model)
    assert frozen.fused_layer_norms == 2
    assert _fused_layer_norm_dtypes(frozen.graph_def) == ["bfloat16", "float32"]
    x = rng.normal(size=(4, 5, 6)).astype("float32")
    got = [t.numpy().astype("float32") for t in frozen(x)]
    expected = [np.asarray(t).astype("float32") for t in model.predict(x, verbose=0)]
    assert got[0].dtype == expected[0].dtype
    # The same float32 statistics; gamma and beta in bfloat16, and each result rounded once:
    # within two bfloat16 units in the last place (2**-7 relative, at most) of the largest.
    np.testing.assert_allclose(got[0], expected[0], rtol=0, atol=2**-6 * np.abs(expected[0]).max())
    np.testing.assert_allclose(got[1], expected[1], rtol=0, atol=1e-5)


def test_layer_norm_read_inside_is_not_fused():
    # A graph that also reads the normalised tokens before gamma and beta must keep them.
    x = keras.Input((4, 6))
    norm = LayerNorm(name="norm")
    out = norm(x)

    class Centered(keras.layers.Layer):
        def call(self, t):
            centered = t - keras.ops.mean(t, axis=-1, keepdims=True)
            variance = keras.ops.mean(keras.ops.square(centered), axis=-1, keepdims=True)
            scale = keras.ops.rsqrt(variance + 1e-5) * norm.gamma
            return centered * scale + norm.beta, scale

    fused, scale = Centered()(x)
    assert freeze_for_inference(keras.Model(x, [out, fused])).fused_layer_norms == 2
    model = keras.Model(x, [out, keras.ops.sum(scale, axis=-1) + fused[..., 0]])
    frozen = freeze_for_inference(model)
    assert frozen.fused_layer_norms == 1  # `norm`, not the one whose scale is also read
    data = np.random.RandomState(1).normal(size=(2, 4, 6)).astype("float32")
    for got, expected in zip(frozen(data), model.predict(data, verbose=0)):
        np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-5)


def test_without_onednn_the_graph_is_left_as_frozen(tiny_reference, monkeypatch):
    path, x, logits = tiny_reference
    model = CvT(**TINY_CONFIG, weights=path, include_preprocessing=False,
                classifier_activation=None, input_shape=x.shape[1:])
    monkeypatch.setattr(frozen_module, "onednn_enabled", lambda: False)
    frozen = freeze_for_inference(model)
    assert frozen.fused_layer_norms == frozen.plain_layout_matmuls == 0
    ops = _ops(frozen.graph_def)
    assert frozen_module.FUSED_LAYER_NORM not in ops and frozen_module.PLAIN_WEIGHT not in ops
    np.testing.assert_allclose(frozen(x).numpy(), logits, rtol=0, atol=1e-4)


def test_frozen_bfloat16_copy_takes_float32_images(cvt13_reference):
    path, x, logits = cvt13_reference
    model = CvT13(weights=path, include_preprocessing=False, classifier_activation=None)
    fast = optimize_for_inference(model, dtype="bfloat16")
    frozen = freeze_for_inference(fast)
    assert frozen.input_signature.dtype == tf.float32
    # Every LayerNorm runs as the kernel's bfloat16 form (statistics in float32), without casts.
    assert frozen.fused_layer_norms == (30 if FUSED else 0)
    assert _fused_layer_norm_dtypes(frozen.graph_def) == ["bfloat16"] * 30
    # bfloat16 weights keep oneDNN's blocked layout; the float32 classifier gets the plain one.
    assert frozen.plain_layout_matmuls == (1 if FUSED else 0)
    assert _matmul_weight_ops(frozen.graph_def)["Identity"] == 52
    out = frozen(x)
    assert out.dtype == tf.float32
    # bfloat16's rounding, as for the unfrozen copy (test_inference.test_bfloat16_copy).
    assert np.max(np.abs(out.numpy() - logits)) <= 5e-2
    np.testing.assert_array_equal(out.numpy().argmax(-1), logits.argmax(-1))


@pytest.mark.parametrize("pooling", [None, "avg"])
def test_frozen_features_at_any_size_and_batch(tiny_reference, pooling):
    path, _, _ = tiny_reference
    model = CvT(**TINY_CONFIG, weights=path, include_top=False, pooling=pooling,
                input_shape=(None, None, 3))
    frozen = freeze_for_inference(model)
    assert frozen.input_signature.shape.as_list() == [None, None, None, 3]
    rng = np.random.RandomState(0)
    for shape in ((1, 64, 64, 3), (3, 80, 56, 3)):
        x = rng.uniform(0, 255, size=shape).astype("float32")
        expected = model.predict(x, verbose=0)
        out = frozen(x).numpy()
        assert out.shape == expected.shape
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5 * max(1.0, np.abs(expected).max()))


def test_frozen_keeps_the_weights_of_freezing_time(tiny_reference):
    path, x, logits = tiny_reference
    model = CvT(**TINY_CONFIG, weights=path, include_preprocessing=False,
                classifier_activation=None, input_shape=x.shape[1:])
    frozen = freeze_for_inference(model, batch_size=len(x))
    model.get_layer("predictions").bias.assign(np.full((TINY_CONFIG["classes"],), 5.0, "float32"))
    np.testing.assert_allclose(frozen(x).numpy(), logits, rtol=0, atol=1e-4)
    assert np.abs(model.predict(x, verbose=0) - logits).min() > 1.0


def test_fixed_batch_size_and_bad_inputs(tiny_reference):
    path, x, _ = tiny_reference
    model = CvT(**TINY_CONFIG, weights=path, include_preprocessing=False, input_shape=(64, 64, 3))
    frozen = freeze_for_inference(model, batch_size=2)
    assert isinstance(frozen, FrozenFunction)
    assert frozen.input_signature.shape.as_list() == [2, 64, 64, 3]
    assert tuple(frozen(np.zeros((2, 64, 64, 3), "float32")).shape) == (2, TINY_CONFIG["classes"])
    with pytest.raises(ValueError, match=r"`x` must have shape \(2, 64, 64, 3\), got \(3, 64, 64, 3\)"):
        frozen(np.zeros((3, 64, 64, 3), "float32"))
    with pytest.raises(ValueError, match="`x` must have shape"):
        frozen(np.zeros((2, 32, 64, 3), "float32"))


def test_bad_arguments():
    with pytest.raises(TypeError, match="`model` must be a keras.Model"):
        freeze_for_inference("cvt13")
    a, b = keras.Input((4,)), keras.Input((4,))
    with pytest.raises(ValueError, match="`model` must have one input, got 2"):
        freeze_for_inference(keras.Model([a, b], keras.layers.Add()([a, b])))
    model = CvT(**TINY_CONFIG, input_shape=(64, 64, 3))
    for batch_size in (0, -1, 2.0, "2", True):
        with pytest.raises(ValueError, match="`batch_size` must be None or a positive int"):
            freeze_for_inference(model, batch_size=batch_size)
    assert tf.is_tensor(freeze_for_inference(model)(np.zeros((1, 64, 64, 3), "float32")))
