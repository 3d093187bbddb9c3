"""The PyTorch and JAX Keras backends run the same model, from the same `.weights.h5` file.

The test session runs on the TensorFlow backend (Keras picks its backend once per process),
so the other backends run in a subprocess with KERAS_BACKEND set.
"""

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from keras_cvt import CvT
from tests.conftest import ROOT, TINY_CONFIG, assert_same_weights_files

# Each backend's subprocess takes a minute on two cores.
pytestmark = pytest.mark.slow

TOLERANCE = 1e-4
# The SGD step of the training comparison: labels of the tiny reference's two images.
LEARNING_RATE = 0.5
LABELS = [3, 7]

TORCH_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import keras
    from keras_cvt import CvT, optimize_for_inference

    config, weights, x_path, out_dir = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    LEARNING_RATE, LABELS = json.loads(sys.argv[5]), np.array(json.loads(sys.argv[6]))
    x = np.load(x_path)
    model = CvT(**config, weights=weights, input_shape=(None, None, 3),
                include_preprocessing=False, classifier_activation=None)
    np.save(out_dir + "/logits.npy", keras.ops.convert_to_numpy(model(x)))
    np.save(out_dir + "/logits_predict.npy", model.predict(x, verbose=0))
    # The folded form ("same" padding at stride 2 with a kernel one larger).
    np.save(out_dir + "/folded.npy", keras.ops.convert_to_numpy(optimize_for_inference(model)(x)))
    # The training path: BatchNorm on batch statistics, then one SGD step (no dropout, no
    # stochastic depth: deterministic, so every backend must land on the same numbers).
    trained = CvT(**config, weights=weights, input_shape=(None, None, 3), include_preprocessing=False,
                  classifier_activation=None)
    np.save(out_dir + "/training.npy", keras.ops.convert_to_numpy(trained(x, training=True)))
    trained.compile(optimizer=keras.optimizers.SGD(learning_rate=LEARNING_RATE),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    loss = trained.train_on_batch(x, LABELS)
    np.save(out_dir + "/loss.npy", np.asarray(loss))
    np.savez(out_dir + "/stepped.npz", *[keras.ops.convert_to_numpy(v) for v in trained.weights])
    with open(out_dir + "/stepped_names.json", "w") as f:
        json.dump([v.path for v in trained.weights], f)
    # Stochastic depth runs too: with it, the training forward is another function.
    dropping = CvT(**config, weights=weights, input_shape=(None, None, 3), include_preprocessing=False,
                   classifier_activation=None, drop_path_rate=0.5)
    np.save(out_dir + "/drop_path.npy", keras.ops.convert_to_numpy(dropping(x, training=True)))
    model.save_weights(out_dir + "/from_torch.weights.h5")
    with open(out_dir + "/backend.txt", "w") as f:
        f.write(keras.backend.backend())
    """
)


def _sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module", params=["torch", "jax"])
def backend_run(request, tiny_reference, tmp_path_factory):
    """Runs the tiny reference model under another backend; returns its output folder."""
    weights, x, _ = tiny_reference
    out_dir = tmp_path_factory.mktemp(f"{request.param}_backend")
    np.save(out_dir / "x.npy", x)
    digest = _sha256(weights)
    env = {
        **os.environ,
        "KERAS_BACKEND": request.param,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [sys.executable, "-c", TORCH_SCRIPT, json.dumps(TINY_CONFIG), str(weights), str(out_dir / "x.npy"),
         str(out_dir), json.dumps(LEARNING_RATE), json.dumps(LABELS)],
        env=env, cwd=out_dir, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # Both backends read the one file; the PyTorch run did not rewrite it.
    assert _sha256(weights) == digest
    return out_dir


def _tf_model(weights):
    return CvT(**TINY_CONFIG, weights=weights, input_shape=(None, None, 3), include_preprocessing=False,
               classifier_activation=None)


def test_this_session_is_tensorflow():
    assert keras.backend.backend() == "tensorflow"


def test_backend_reproduces_reference_logits(backend_run, tiny_reference):
    _, _, logits = tiny_reference
    assert (backend_run / "backend.txt").read_text() == backend_run.name.split("_backend")[0]
    out = np.load(backend_run / "logits.npy")
    assert out.shape == logits.shape == (2, 10)
    assert np.abs(out - logits).max() <= TOLERANCE
    np.testing.assert_allclose(np.load(backend_run / "logits_predict.npy"), out, rtol=0, atol=1e-6)


def test_backend_folded_model_reproduces_reference_logits(backend_run, tiny_reference):
    _, _, logits = tiny_reference
    folded = np.load(backend_run / "folded.npy")
    assert folded.shape == logits.shape
    assert np.abs(folded - logits).max() <= TOLERANCE


def test_backend_equals_tensorflow_backend(backend_run, tiny_reference):
    weights, x, _ = tiny_reference
    tf_out = keras.ops.convert_to_numpy(_tf_model(weights)(x))
    other_out = np.load(backend_run / "logits.npy")
    assert np.abs(other_out - tf_out).max() <= 1e-5


@pytest.fixture(scope="module")
def tensorflow_training(tiny_reference):
    """The TensorFlow backend's training forward, SGD step loss and weights after the step."""
    weights, x, _ = tiny_reference
    model = _tf_model(weights)
    inference = keras.ops.convert_to_numpy(model(x))
    forward = keras.ops.convert_to_numpy(model(x, training=True))
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=LEARNING_RATE),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    loss = model.train_on_batch(x, np.array(LABELS))
    stepped = [keras.ops.convert_to_numpy(v) for v in model.weights]
    initial = [keras.ops.convert_to_numpy(v) for v in _tf_model(weights).weights]
    return inference, forward, float(loss), [v.path for v in model.weights], stepped, initial


def test_backend_training_forward(backend_run, tensorflow_training):
    inference, forward, _, _, _, _ = tensorflow_training
    out = np.load(backend_run / "training.npy")
    # Batch statistics make the training forward another function, which the backend matches.
    assert np.abs(forward - inference).max() > 100 * TOLERANCE
    assert out.shape == forward.shape == (2, 10)
    assert np.abs(out - forward).max() <= 1e-5
    # Stochastic depth changes it again (it drops the last stage's residual branches).
    assert np.abs(np.load(backend_run / "drop_path.npy") - out).max() > 100 * TOLERANCE


def test_backend_gradient_step(backend_run, tensorflow_training):
    _, _, loss, names, stepped, initial = tensorflow_training
    assert float(np.load(backend_run / "loss.npy")) == pytest.approx(loss, abs=1e-5)
    assert json.loads((backend_run / "stepped_names.json").read_text()) == names
    other = np.load(backend_run / "stepped.npz")
    other = [other[f"arr_{i}"] for i in range(len(names))]
    moved = [name for name, a, b in zip(names, initial, stepped) if np.abs(a - b).max() > 1e-3]
    # The step moves every trainable kernel (and the BatchNorm statistics), the same way here.
    assert len(moved) > len(names) // 2
    differing = {
        name: float(np.abs(a - b).max()) for name, a, b in zip(names, stepped, other) if np.abs(a - b).max() > 1e-5
    }
    assert differing == {}


def test_weights_saved_under_torch_load_under_tensorflow(backend_run, tiny_reference):
    weights, x, _ = tiny_reference
    # The file written under PyTorch holds the converter's arrays bit for bit.
    assert_same_weights_files(weights, backend_run / "from_torch.weights.h5")
    original = _tf_model(weights)
    from_torch = _tf_model(backend_run / "from_torch.weights.h5")
    for a, b in zip(original.weights, from_torch.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), err_msg=a.path)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(from_torch(x)), keras.ops.convert_to_numpy(original(x))
    )
