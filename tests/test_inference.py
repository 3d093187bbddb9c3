"""keras_cvt.optimize_for_inference: folded BatchNorm, scale and QuickGELU; the bfloat16 copy."""

import keras
import numpy as np
import pytest

import os
import subprocess
import sys

from keras_cvt import CvT, CvT13, CvTBlock, optimize_for_inference
from keras_cvt.inference.layers import FoldedConvAttention, FoldedCvTBlock
from tests.conftest import ROOT, TINY_CONFIG, quick_jax_env


def _tiny(weights, **kwargs):
    kwargs.setdefault("input_shape", (None, None, 3))
    return CvT(**TINY_CONFIG, weights=weights, include_preprocessing=False, **kwargs)


@pytest.mark.slow
def test_folded_cvt13_reproduces_the_original_code(cvt13_reference):
    path, x, logits = cvt13_reference
    model = CvT13(weights=path, include_preprocessing=False, classifier_activation=None)
    before = [w.copy() for w in model.get_weights()]
    folded = optimize_for_inference(model)

    out = folded.predict(x, verbose=0)
    assert np.max(np.abs(out - logits)) <= 1e-4
    assert np.max(np.abs(out - model.predict(x, verbose=0))) <= 1e-5
    # BatchNorm gone: 4 vectors of width C per projection replaced by one bias, 3 projections
    # per block; the key and value biases gone too (dropped, folded into `proj`): 11 vectors
    # per block. The strided key and value kernels grow from 3x3 to 4x4: 2 x 7 vectors more.
    # CvT-13's blocks are 1 x 64, 2 x 192 and 10 x 384 wide.
    assert model.count_params() == 20_023_208
    assert folded.count_params() == 20_023_208 + (14 - 11) * (64 + 2 * 192 + 10 * 384)
    attention = folded.get_layer("stage2_block3").attn
    assert attention.conv_proj_q.kernel.shape == (3, 3, 384, 1)
    for conv in (attention.conv_proj_k, attention.conv_proj_v):
        assert conv.kernel.shape == (4, 4, 384, 1) and conv.padding == "same"
        kernel = conv.kernel.numpy()
        assert not kernel[3].any() and not kernel[:, 3].any() and kernel[:3, :3].all()
    for original, now in zip(before, model.get_weights()):
        np.testing.assert_array_equal(original, now)  # the source model is left alone


def test_folded_structure_keeps_the_layer_names(tiny_reference):
    path, _, _ = tiny_reference
    model = _tiny(path)
    folded = optimize_for_inference(model)
    assert [layer.name for layer in folded.layers] == [layer.name for layer in model.layers]
    blocks = [layer for layer in folded.layers if isinstance(layer, CvTBlock)]
    assert len(blocks) == sum(TINY_CONFIG["depths"])
    assert all(type(b) is FoldedCvTBlock and type(b.attn) is FoldedConvAttention for b in blocks)
    assert not any(isinstance(layer, FoldedCvTBlock) for layer in model.layers)
    paths = {v.path for v in folded.weights}
    assert not any("_bn/" in p for p in paths)
    assert "stage0_block0/attn/conv_proj_q/bias" in paths
    assert not any(isinstance(l, keras.layers.BatchNormalization) for l in folded._flatten_layers())
    # Folding a folded model changes nothing.
    again = optimize_for_inference(folded)
    for a, b in zip(folded.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("pooling", [None, "avg", "token"])
def test_folded_features_at_any_size(tiny_reference, pooling):
    path, _, _ = tiny_reference
    model = _tiny(path, include_top=False, pooling=pooling)
    folded = optimize_for_inference(model)
    x = np.random.RandomState(0).normal(size=(2, 80, 56, 3)).astype("float32")
    expected = model.predict(x, verbose=0)
    out = folded.predict(x, verbose=0)
    assert out.shape == expected.shape
    assert np.max(np.abs(out - expected)) <= 1e-5 * max(1.0, np.max(np.abs(expected)))


@pytest.mark.slow
def test_folded_model_saves_and_loads(tiny_reference, tmp_path):
    path, x, _ = tiny_reference
    folded = optimize_for_inference(_tiny(path))
    folded.save(tmp_path / "folded.keras")
    restored = keras.saving.load_model(tmp_path / "folded.keras")
    blocks = [b for b in restored.layers if isinstance(b, CvTBlock)]
    assert blocks and all(type(b) is FoldedCvTBlock for b in blocks)
    np.testing.assert_allclose(restored.predict(x, verbose=0), folded.predict(x, verbose=0), atol=1e-6)


@pytest.mark.slow
def test_bfloat16_copy(cvt13_reference):
    path, x, logits = cvt13_reference
    model = CvT13(weights=path, include_preprocessing=False, classifier_activation=None)
    fast = optimize_for_inference(model, dtype="bfloat16")
    block = fast.get_layer("stage2_block0")
    assert block.compute_dtype == "bfloat16" and block.fc1.kernel.dtype == "bfloat16"
    assert fast.get_layer("predictions").compute_dtype == "float32"
    out = fast.predict(x, verbose=0)
    assert out.dtype == np.float32 and np.all(np.isfinite(out))
    # bfloat16 keeps 8 bits of mantissa: observed ~1.6e-2 on logits of std 0.39.
    assert np.max(np.abs(out - logits)) <= 5e-2
    np.testing.assert_array_equal(out.argmax(-1), logits.argmax(-1))


def test_bad_arguments():
    with pytest.raises(TypeError, match="`model` must be a keras.Model"):
        optimize_for_inference("cvt13")
    inputs = keras.Input((8,))
    with pytest.raises(ValueError, match="no CvTBlock"):
        optimize_for_inference(keras.Model(inputs, keras.layers.Dense(2)(inputs)))
    model = CvT(**TINY_CONFIG, input_shape=(64, 64, 3))
    with pytest.raises(ValueError, match="`dtype` must be None or one of"):
        optimize_for_inference(model, dtype="int8")


# Under JAX, the folded form imports no TensorFlow itself. Keras does, where TensorFlow is
# installed, to serialise a layer config (`serialize_keras_object` asks `tf.available`), which
# `optimize_for_inference` reads: the first import of TensorFlow must come from there.
_TENSORFLOW_IMPORTS = """
import sys, traceback
import numpy as np

importers = []

class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" and not importers:
            # The innermost frame outside the import machinery (and this spy) made the import.
            frames = [f.filename for f in traceback.extract_stack()[:-1]]
            importers.append([f for f in frames if "importlib" not in f and "module_utils" not in f][-1])

sys.meta_path.insert(0, Spy())
import keras_cvt
import keras_cvt.inference
import keras_cvt.inference.layers
model = keras_cvt.CvT(depths=(1, 2, 2), embed_dims=(16, 32, 48), num_heads=(1, 2, 3),
                      input_shape=(32, 32, 3), classes=4)
x = np.random.RandomState(0).uniform(0, 255, (1, 32, 32, 3)).astype("float32")
expected = np.asarray(model(x))
assert not importers, importers
folded = keras_cvt.optimize_for_inference(model)
assert np.abs(np.asarray(folded(x)) - expected).max() < 1e-5
print("first tensorflow import:", importers[0] if importers else None)
"""


@pytest.mark.slow
def test_the_folded_form_imports_no_tensorflow():
    env = quick_jax_env({**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(ROOT)})
    result = subprocess.run([sys.executable, "-c", _TENSORFLOW_IMPORTS], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("first tensorflow import:")]
    importer = line.split(":", 1)[1].strip()
    if importer != "None":  # TensorFlow is installed: Keras' serialisation imported it
        assert importer.endswith("keras/src/saving/serialization_lib.py"), importer


def test_old_configs_load_or_are_refused_by_name():
    config = CvTBlock(8, 2).get_config()
    # Saved by keras_cvt before the folded form had classes of its own.
    assert CvTBlock.from_config({**config, "folded": False}).get_config() == config
    with pytest.raises(ValueError, match="folded inference form of an older keras_cvt"):
        CvTBlock.from_config({**config, "folded": True})


# ---------------------------------------------------------------------------------------------
# A block whose map nothing reads computes the class token alone.


def _matmul_macs(model, size):
    """Multiply-adds of the matmuls (Dense layers and attention) in the graph
    TensorFlow runs for one `size` x `size` image, from their static shapes."""
    import tensorflow as tf

    spec = tf.TensorSpec([1, size, size, 3], tf.float32)
    graph = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec).graph
    total = 0
    for op in graph.get_operations():
        if op.type in ("MatMul", "BatchMatMulV2", "BatchMatMulV3"):
            a, b = (tuple(t.shape.as_list()) for t in op.inputs)
            rows = a[-1] if op.get_attr("transpose_a" if op.type == "MatMul" else "adj_x") else a[-2]
            inner = a[-2] if op.get_attr("transpose_a" if op.type == "MatMul" else "adj_x") else a[-1]
            columns = b[-2] if op.get_attr("transpose_b" if op.type == "MatMul" else "adj_y") else b[-1]
            batch = int(np.prod(np.broadcast_shapes(a[:-2], b[:-2]), dtype=np.int64))
            total += batch * rows * inner * columns
    return total


@pytest.mark.parametrize(
    "kwargs, class_token_only",
    [
        ({}, True),  # the classifier reads the last block's class token alone
        ({"include_top": False, "pooling": "token"}, True),
        ({"include_top": False}, False),  # the map is the output
        ({"include_top": False, "pooling": "avg"}, False),
    ],
)
def test_a_block_whose_map_nothing_reads_computes_the_class_token_alone(
    tiny_reference, kwargs, class_token_only
):
    path, _, _ = tiny_reference
    model = _tiny(path, **kwargs)
    folded = optimize_for_inference(model)
    flags = {b.name: b.class_token_only for b in folded.layers if isinstance(b, FoldedCvTBlock)}
    assert flags == {name: name == "stage2_block1" and class_token_only for name in flags}
    x = np.random.RandomState(5).uniform(-2, 2, (2, 64, 48, 3)).astype("float32")
    expected = model.predict(x, verbose=0)
    out = folded.predict(x, verbose=0)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5 * np.abs(expected).max())

    # The work saved is the last block's query, attention rows, output projection and MLP for
    # all tokens but the class token, to the multiply-add.
    saved = 0
    if class_token_only:
        dim, tokens, kv_tokens = 48, 4 * 4, 2 * 2 + 1  # a 64 x 64 image's last map: 4 x 4
        saved = tokens * (dim * dim + 2 * kv_tokens * dim + dim * dim + 2 * dim * 4 * dim)
    assert _matmul_macs(model, 64) - _matmul_macs(folded, 64) == saved
