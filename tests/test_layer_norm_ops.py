"""`keras_cvt.layer_norm_ops` against `keras_cvt.LayerNorm.call` and the three rewrites that read it.

If `LayerNorm.call` changes, these fail until `STEPS` (and with it every rewrite) follows: the
record must compute the layer's numbers, and the traced layer must be the record's operations
and nothing else; the ONNX (tf2onnx) and OpenVINO rewrites must fuse it, with the same numbers.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_cvt import layer_norm_ops
from keras_cvt.inference import _tf_internals, frozen
from keras_cvt.layers import LayerNorm

CHANNELS = 8


def _layer(seed=0):
    layer = LayerNorm(epsilon=1e-5)
    layer.build((None, None, CHANNELS))
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.uniform(0.5, 1.5, CHANNELS), rng.normal(0, 0.3, CHANNELS)])
    return layer


def _tokens(seed=1):
    return np.random.default_rng(seed).normal(1.0, 3.0, (2, 5, CHANNELS)).astype(np.float32)


def _evaluate_steps(x, gamma, beta, epsilon):
    """`STEPS` run in float64 NumPy."""
    operations = {
        "mean": lambda a: a.mean(axis=-1, keepdims=True),
        "subtract": np.subtract,
        "square": np.square,
        "add": np.add,
        "rsqrt": lambda a: 1.0 / np.sqrt(a),
        "multiply": np.multiply,
    }
    values = {"x": x, "gamma": gamma, "beta": beta, "epsilon": epsilon}
    for step in layer_norm_ops.STEPS:
        values[step.name] = operations[step.operation](*(values[name] for name in step.operands))
    return values[layer_norm_ops.OUTPUT]


def test_the_steps_compute_the_layer():
    layer, x = _layer(), _tokens()
    gamma, beta = (w.astype(np.float64) for w in layer.get_weights())
    expected = _evaluate_steps(x.astype(np.float64), gamma, beta, layer.epsilon)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), expected, rtol=0, atol=1e-5)


def _edited_call(self, inputs):
    """The same numbers by other operations: what an edit of `call` looks like to the rewrites."""
    x = keras.ops.cast(inputs, "float32")
    mean, variance = keras.ops.moments(x, axes=[-1], keepdims=True)
    return (x - mean) * keras.ops.rsqrt(variance + self.epsilon) * self.gamma + self.beta


@pytest.fixture(params=["as_written", "edited"])
def call(request, monkeypatch):
    if request.param == "edited":
        monkeypatch.setattr(LayerNorm, "call", _edited_call)
    return request.param


def _traced(layer):
    spec = tf.TensorSpec((None, 5, CHANNELS), tf.float32)
    return tf.function(lambda x: layer(x)).get_concrete_function(spec)


def test_the_traced_layer_is_the_steps_and_nothing_else(call):
    graph = _tf_internals.convert_variables_to_constants_v2(_traced(_layer())).graph
    view = frozen._Graph()
    found = [m for op in graph.get_operations() if (m := layer_norm_ops.match(view, op, frozen._FORMS))]
    computing = {op.name for op in graph.get_operations() if op.type not in ("Placeholder", "Const", "Identity", "NoOp")}
    if call == "edited":
        assert found == []
        return
    (match,) = found
    # One op per step (TensorFlow writes each operation as one op), and every op is one of them.
    assert len(match.members) == len(layer_norm_ops.STEPS)
    assert {op.name for op in match.members} == computing
    assert [op.type for op in match.members if op.type == "Mean"] == ["Mean"] * len(layer_norm_ops.MEANS)


@pytest.mark.parametrize("runtime", ["onnx", "openvino"])
def test_the_exports_fuse_the_traced_layer(runtime):
    layer, x = _layer(), _tokens()
    concrete = _traced(layer)
    expected = keras.ops.convert_to_numpy(layer(x))
    if runtime == "onnx":
        onnxruntime = pytest.importorskip("onnxruntime")
        tf2onnx = pytest.importorskip("tf2onnx")
        from keras_cvt.export.onnx import fuse_layer_norms

        model, _ = tf2onnx.convert.from_function(
            tf.function(lambda x: layer(x)), input_signature=[tf.TensorSpec((None, 5, CHANNELS), tf.float32)], opset=17
        )
        fused = fuse_layer_norms(model)
        session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        (result,) = session.run(None, {session.get_inputs()[0].name: x})
    else:
        openvino = pytest.importorskip("openvino")
        from keras_cvt.export.openvino import _fuse_layer_norms

        model = openvino.convert_model(concrete)
        fused = _fuse_layer_norms(model)
        compiled = openvino.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        result = compiled(x)[0]
    assert fused == 1
    np.testing.assert_allclose(result, expected, rtol=0, atol=1e-5)
