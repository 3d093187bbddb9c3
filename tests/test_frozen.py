"""keras_cvt.freeze_for_inference: the model as a TensorFlow graph with constant weights."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_cvt import (
    CvT,
    CvT13,
    CvTBlock,
    FrozenFunction,
    LayerNorm,
    freeze_for_inference,
    optimize_for_inference,
)
from keras_cvt.inference import _tf_internals
from keras_cvt.inference import frozen as frozen_module
from tests.conftest import TINY_CONFIG

# What this machine's TensorFlow does (the x86 builds run oneDNN by default): each count below
# is what the rewrite gives here, worked out from the model; the other branches are tested with
# availability mocked (test_without_onednn_or_its_kernel) and, for the rewrite
# itself, on the GraphDef (test_fuse_layer_norms_rewrites_every_match).
FUSED = frozen_module.fused_layer_norm_available()
ONEDNN = frozen_module.onednn_enabled()

VARIABLE_OPS = {"VarHandleOp", "ReadVariableOp", "VariableV2", "ResourceGather"}


def _layer_norms(model):
    return sum(isinstance(layer, LayerNorm) for layer in model._flatten_layers())


def _matmul_layers(model):
    """The Dense layers: each runs one MatMul of its tokens against its kernel."""
    return [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.Dense)]


def _ops(graph_def):
    nodes = list(graph_def.node)
    for function in graph_def.library.function:
        nodes += list(function.node_def)
    return {node.op for node in nodes}


@pytest.mark.slow
def test_frozen_cvt13_reproduces_the_original_code(cvt13_reference):
    path, x, logits = cvt13_reference
    model = CvT13(weights=path, include_preprocessing=False, classifier_activation=None)
    folded = optimize_for_inference(model)
    frozen = freeze_for_inference(folded)
    out = frozen(x).numpy()
    assert np.max(np.abs(out - logits)) <= 1e-4
    assert np.max(np.abs(out - model.predict(x, verbose=0))) <= 1e-5
    ops = _ops(frozen.graph_def)
    assert "Const" in ops and not ops & VARIABLE_OPS  # every weight is a constant
    # The embeddings', the blocks' and the head's (30): every one recognised, and run as
    # oneDNN's kernel where it exists.
    layer_norms = _layer_norms(folded)
    assert layer_norms == 30
    assert frozen.layer_norms == layer_norms
    assert frozen.fused_layer_norms == (layer_norms if FUSED else 0)
    assert (frozen_module.FUSED_LAYER_NORM in ops) == FUSED
    assert not ops & {"Rsqrt", "Square"} if FUSED else {"Rsqrt", "Square"} <= ops
    # q, k, v, proj, fc1 and fc2 in every block, and the classifier: every MatMul weight is read
    # as a non-constant where oneDNN runs.
    matmuls = len(_matmul_layers(folded))
    assert frozen.plain_layout_matmuls == (matmuls if ONEDNN else 0)
    assert _matmul_weight_ops(frozen.graph_def) == {frozen_module.PLAIN_WEIGHT if ONEDNN else "Identity": matmuls}
    # Keys transposed for the scores in every block; q, k and v split into heads and the output
    # merged back, in the multi-head blocks only (stage 1's one head needs reshapes alone).
    blocks = [layer for layer in folded.layers if isinstance(layer, CvTBlock)]
    transposes = [node.name for node in frozen.graph_def.node if node.op == "Transpose"]
    assert len(transposes) == len(blocks) + 4 * sum(block.num_heads > 1 for block in blocks)
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
    assert frozen.plain_layout_matmuls == (1 if ONEDNN else 0)
    counts = _matmul_weight_ops(frozen.graph_def)
    assert counts.get(frozen_module.PLAIN_WEIGHT, 0) == frozen.plain_layout_matmuls and sum(counts.values()) == 2
    x = np.random.RandomState(2).normal(size=(3, 4, 6)).astype("float32")
    for got, expected in zip(frozen(x), model.predict(x, verbose=0)):
        np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-5)


def test_private_tensorflow_apis():
    # _tf_internals failing to import (a TensorFlow release that moved them) fails this module.
    assert isinstance(_tf_internals.onednn_enabled(), bool)
    assert _tf_internals.op_registered("MatMul") and not _tf_internals.op_registered("NoSuchOpAnywhere")
    variable = tf.Variable([[2.0]])
    concrete = tf.function(lambda x: tf.matmul(x, variable)).get_concrete_function(tf.TensorSpec((1, 1)))
    frozen = _tf_internals.convert_variables_to_constants_v2(concrete)
    assert not _ops(frozen.graph.as_graph_def()) & VARIABLE_OPS
    assert frozen(tf.constant([[3.0]]))[0].numpy().tolist() == [[6.0]]


def _tiny(**kwargs):
    return CvT(**TINY_CONFIG, include_preprocessing=False, input_shape=(32, 32, 3), **kwargs)


@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_the_match_finds_every_layer_norm(dtype):
    # On every machine, with or without oneDNN's kernel: an edit of `LayerNorm.call` that the
    # match no longer recognises fails here (see the next test).
    model = optimize_for_inference(_tiny(), dtype=dtype)
    frozen = freeze_for_inference(model)
    assert frozen.layer_norms == _layer_norms(model) == 2 * sum(TINY_CONFIG["depths"]) + 3 + 1
    assert frozen.fused_layer_norms == (frozen.layer_norms if FUSED else 0)


def test_an_edited_layer_norm_is_not_matched(monkeypatch):
    # The same numbers by another sequence of operations: what the test above catches.
    def call(self, inputs):
        x = keras.ops.cast(inputs, "float32")
        mean, variance = keras.ops.moments(x, axes=[-1], keepdims=True)
        return keras.ops.cast((x - mean) * keras.ops.rsqrt(variance + self.epsilon) * self.gamma + self.beta,
                              self.compute_dtype)

    monkeypatch.setattr(LayerNorm, "call", call)
    frozen = freeze_for_inference(_tiny())
    assert frozen.layer_norms == frozen.fused_layer_norms == 0


def _frozen_graph(model):
    """The frozen graph of `model`, before any rewrite."""
    spec = tf.TensorSpec((None,) + tuple(model.inputs[0].shape[1:]), tf.float32)
    concrete = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    return _tf_internals.convert_variables_to_constants_v2(concrete).graph


def test_fuse_layer_norms_rewrites_every_match():
    # The replacing half on its own, on any machine (running the result needs the kernel).
    model = _tiny()
    graph = _frozen_graph(model)
    matches = frozen_module.find_layer_norms(graph)
    assert len(matches) == _layer_norms(model)
    graph_def = graph.as_graph_def()
    before = {node.name: node.op for node in graph_def.node}
    assert frozen_module.fuse_layer_norms(graph_def, matches) == len(matches)
    nodes = {node.name: node for node in graph_def.node}
    fused = [node for node in graph_def.node if node.op == frozen_module.FUSED_LAYER_NORM]
    assert len(fused) == len(matches)
    for match in matches:
        # The LayerNorm's output, read by the rest of the graph, is now the kernel's, reshaped.
        output = nodes[match.output.name]
        assert output.op == "Reshape" and output.input[0] == f"{match.output.name}/fused/layer_norm"
        kernel = nodes[output.input[0]]
        assert kernel.input[1:] == [match.gamma.op.name, match.beta.op.name]
        assert kernel.attr["epsilon"].f == pytest.approx(1e-5)
    # Nothing else changed: only the outputs replaced, and the kernels' nodes added.
    for name, op in before.items():
        assert nodes[name].op == op or name in {m.output.name for m in matches}


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
    assert frozen.layer_norms == 1 and frozen.fused_layer_norms == (1 if FUSED else 0)
    np.testing.assert_allclose(frozen(x).numpy(), ours.predict(x, verbose=0), rtol=0, atol=1e-5)
    # Keras' own form is another graph: left as it is, still correct.
    frozen_keras = freeze_for_inference(keras_form)
    assert frozen_keras.layer_norms == frozen_keras.fused_layer_norms == 0
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
    assert frozen.layer_norms == 2 and frozen.fused_layer_norms == (2 if FUSED else 0)
    assert _fused_layer_norm_dtypes(frozen.graph_def) == (["bfloat16", "float32"] if FUSED else [])
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
    assert freeze_for_inference(keras.Model(x, [out, fused])).layer_norms == 2
    model = keras.Model(x, [out, keras.ops.sum(scale, axis=-1) + fused[..., 0]])
    frozen = freeze_for_inference(model)
    assert frozen.layer_norms == 1  # `norm`, not the one whose scale is also read
    assert frozen.fused_layer_norms == (1 if FUSED else 0)
    data = np.random.RandomState(1).normal(size=(2, 4, 6)).astype("float32")
    for got, expected in zip(frozen(data), model.predict(data, verbose=0)):
        np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("missing", ["onednn_enabled", "fused_layer_norm_available"])
def test_without_onednn_or_its_kernel(tiny_reference, monkeypatch, missing):
    path, x, logits = tiny_reference
    model = CvT(**TINY_CONFIG, weights=path, include_preprocessing=False,
                classifier_activation=None, input_shape=x.shape[1:])
    monkeypatch.setattr(frozen_module, missing, lambda: False)
    frozen = freeze_for_inference(model)
    # Still recognised (matching needs neither), left as they are.
    assert frozen.layer_norms == _layer_norms(model) and frozen.fused_layer_norms == 0
    ops = _ops(frozen.graph_def)
    assert frozen_module.FUSED_LAYER_NORM not in ops and {"Rsqrt", "Square"} <= ops
    matmuls = len(_matmul_layers(model))
    if missing == "onednn_enabled":  # the graph is left as frozen
        assert frozen.plain_layout_matmuls == 0 and frozen_module.PLAIN_WEIGHT not in ops
        assert _matmul_weight_ops(frozen.graph_def) == {"Identity": matmuls}
    else:  # oneDNN without its LayerNorm kernel: the matmul weights are still rewritten
        assert frozen.plain_layout_matmuls == (matmuls if ONEDNN else 0)
    np.testing.assert_allclose(frozen(x).numpy(), logits, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_frozen_bfloat16_copy_takes_float32_images(cvt13_reference):
    path, x, logits = cvt13_reference
    model = CvT13(weights=path, include_preprocessing=False, classifier_activation=None)
    fast = optimize_for_inference(model, dtype="bfloat16")
    frozen = freeze_for_inference(fast)
    assert frozen.input_signature.dtype == tf.float32
    # Every LayerNorm runs as the kernel's bfloat16 form (statistics in float32), without casts.
    layer_norms = _layer_norms(fast)
    assert frozen.layer_norms == layer_norms
    assert frozen.fused_layer_norms == (layer_norms if FUSED else 0)
    assert _fused_layer_norm_dtypes(frozen.graph_def) == ["bfloat16"] * frozen.fused_layer_norms
    # bfloat16 weights keep oneDNN's blocked layout; the float32 classifier gets the plain one.
    matmuls = _matmul_layers(fast)
    wide = [layer for layer in matmuls if layer.variable_dtype == "float32"]
    assert [layer.name for layer in wide] == ["predictions"]
    assert frozen.plain_layout_matmuls == (len(wide) if ONEDNN else 0)
    assert _matmul_weight_ops(frozen.graph_def)["Identity"] == len(matmuls) - frozen.plain_layout_matmuls
    out = frozen(x)
    assert out.dtype == tf.float32
    # bfloat16's rounding, as for the unfrozen copy (test_inference.test_bfloat16_copy).
    assert np.max(np.abs(out.numpy() - logits)) <= 5e-2
    np.testing.assert_array_equal(out.numpy().argmax(-1), logits.argmax(-1))


@pytest.mark.slow
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
