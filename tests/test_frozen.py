"""keras_cvt.freeze_for_inference: the model as a TensorFlow graph with constant weights."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_cvt import CvT, CvT13, FrozenFunction, freeze_for_inference, optimize_for_inference
from tests.conftest import TINY_CONFIG

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


def test_frozen_bfloat16_copy_takes_float32_images(cvt13_reference):
    path, x, logits = cvt13_reference
    model = CvT13(weights=path, include_preprocessing=False, classifier_activation=None)
    fast = optimize_for_inference(model, dtype="bfloat16")
    frozen = freeze_for_inference(fast)
    assert frozen.input_signature.dtype == tf.float32
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
