"""TensorFlow only where it is needed.

Under the JAX and PyTorch backends, `import keras_cvt`, building a CvT (the generic builder and
`CvT13`), running it, loading a `.weights.h5` file, `optimize_for_inference` and
`decode_predictions` import no TensorFlow and no TensorFlow Datasets. Each backend runs in a
subprocess (Keras picks its backend once per process) in which `import tensorflow` fails, as
where it is not installed: every step must still work, and each attempt to import it is
recorded with the code that made it.

One attempt is Keras's own: its serializer (`get_config`, which `optimize_for_inference` reads)
asks whether TensorFlow is installed, to recognise `tf.TensorShape`s. That probe, from inside
Keras, is allowed; an attempt from keras_cvt or weights_conversion is not.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.conftest import ROOT, TINY_CONFIG, quick_jax_env

BLOCKED = ("tensorflow", "tensorflow_datasets")

SCRIPT = textwrap.dedent(
    """
    import json, sys, traceback

    BLOCKED, PROJECT = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    attempts = []


    class Absent:
        '''Makes `import tensorflow` (and tensorflow_datasets) fail, recording who asked.'''

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] not in BLOCKED:
                return None
            frames = traceback.extract_stack()[:-1]
            if frames[-2].filename == "<frozen importlib.util>":
                return None  # importlib.util.find_spec (torch asks), not an import
            callers = [f for f in frames if not f.filename.startswith("<frozen") and "importlib" not in f.filename]
            project = [f"{f.filename}:{f.lineno}" for f in callers if any(p in f.filename for p in PROJECT)]
            attempts.append({"step": step, "module": name, "importer": callers[-1].filename,
                             "project_frames": project})
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)


    sys.meta_path.insert(0, Absent())
    step = "import keras_cvt"
    import numpy as np
    import keras
    import keras_cvt

    config, weights, x_path, out_dir = json.loads(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
    x = np.load(x_path)
    results = {"backend": keras.backend.backend()}

    step = "CvT"
    model = keras_cvt.CvT(**config, input_shape=(None, None, 3), include_preprocessing=False,
                          classifier_activation=None)
    step = "predict"
    model.predict(x, verbose=0)
    step = ".weights.h5"
    model = keras_cvt.CvT(**config, weights=weights, input_shape=(None, None, 3), include_preprocessing=False,
                          classifier_activation=None)
    np.save(out_dir + "/logits.npy", model.predict(x, verbose=0))
    step = "call"
    np.save(out_dir + "/called.npy", keras.ops.convert_to_numpy(model(x)))
    step = "CvT13"
    cvt13 = keras_cvt.CvT13(weights=None, input_shape=(64, 64, 3))
    probabilities = cvt13.predict(np.random.default_rng(0).uniform(0, 255, (1, 64, 64, 3)), verbose=0)
    results["cvt13"] = [list(probabilities.shape), float(probabilities.sum())]
    step = "decode_predictions"
    one_hot = np.zeros((1, 1000))
    one_hot[0, 2] = 1.0
    results["decoded"] = keras_cvt.decode_predictions(one_hot, top=1)[0][0][:2]
    step = "submodules"
    results["submodules"] = [callable(keras_cvt.hf.labels), callable(keras_cvt.sources.resolve_weights),
                             callable(keras_cvt.downloads.download), "keras_hub" in sys.modules]
    step = "optimize_for_inference"
    np.save(out_dir + "/folded.npy", keras.ops.convert_to_numpy(keras_cvt.optimize_for_inference(model)(x)))
    results["attempts"] = attempts
    results["loaded"] = sorted(name for name in sys.modules if name.split(".")[0] in BLOCKED)
    with open(out_dir + "/results.json", "w") as f:
        json.dump(results, f)
    """
)


def run_python(args, backend, cwd):
    env = {
        **os.environ,
        "KERAS_BACKEND": backend,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    if backend == "jax":
        env = quick_jax_env(env)
    return subprocess.run(
        [sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_no_tensorflow_under_another_backend(backend, tiny_reference, tmp_path):
    weights, x, logits = tiny_reference
    np.save(tmp_path / "x.npy", x)
    project = [str(ROOT / "keras_cvt"), str(ROOT / "weights_conversion")]
    args = [json.dumps(BLOCKED), json.dumps(project), json.dumps(TINY_CONFIG), str(weights)]
    result = run_python(["-c", SCRIPT, *args, str(tmp_path / "x.npy"), str(tmp_path)], backend, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["backend"] == backend
    assert results["loaded"] == []
    from_project = [a for a in results["attempts"] if any(a["importer"].startswith(path) for path in project)]
    assert from_project == []
    # Only Keras's serializer probes for TensorFlow, and only where a config is read.
    assert {(a["step"], a["module"], os.path.basename(a["importer"])) for a in results["attempts"]} <= {
        ("optimize_for_inference", "tensorflow", "module_utils.py")
    }
    # And everything worked without it.
    assert np.abs(np.load(tmp_path / "logits.npy") - logits).max() <= 1e-4
    assert np.abs(np.load(tmp_path / "called.npy") - logits).max() <= 1e-4
    assert np.abs(np.load(tmp_path / "folded.npy") - logits).max() <= 1e-4
    assert results["cvt13"][0] == [1, 1000] and results["cvt13"][1] == pytest.approx(1.0, abs=1e-4)
    assert results["decoded"] == ["n01484850", "great_white_shark"]
    # keras_cvt.hf & co. reachable after a plain `import keras_cvt`, without keras-hub.
    assert results["submodules"] == [True, True, True, False]


def test_import_keras_cvt_imports_no_tensorflow_datasets(tmp_path):
    code = (
        "import sys, keras_cvt, keras_cvt.training, weights_conversion; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'tensorflow_datasets'))"
    )
    result = run_python(["-c", code], "tensorflow", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_reading_a_tfds_dataset_without_tensorflow_datasets_names_the_extra(monkeypatch):
    from keras_cvt import training

    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # what an absent package does
    for read in (
        lambda: training.tfds_source("tf_flowers", "train"),
        lambda: training.default_tfds_splits("x"),
    ):
        with pytest.raises(ImportError, match=r"--dataset.*pip install keras-cvt\[datasets\]"):
            read()
