"""Saving and rebuilding: `.keras`, `.weights.h5`, configs and clone_model."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_cvt
from keras_cvt import CvT, CvT13
from tests.conftest import ROOT, TINY_CONFIG

LAYER_CLASSES = ("ClassToken", "ConvAttention", "ConvEmbedding", "CvTBlock", "LayerNorm", "StochasticDepth")


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _pixels(shape, seed=0):
    return np.random.RandomState(seed).uniform(0, 255, shape).astype("float32")


def _assert_same_weights(a, b):
    assert [w.path for w in a.weights] == [w.path for w in b.weights]
    for wa, wb in zip(a.weights, b.weights):
        np.testing.assert_array_equal(_np(wa), _np(wb), err_msg=wa.path)


@pytest.fixture(scope="module")
def cvt13_converted(cvt13_reference):
    """CvT13 holding the perturbed reference weights (every bias and norm statistic non-trivial)."""
    path, _, _ = cvt13_reference
    return CvT13(weights=path)


def _layer_classes():
    """Every layer class the package defines (base classes of several, `...Base`, aside)."""
    from keras_cvt import layers
    from keras_cvt.inference import layers as inference_layers

    return {
        name: cls
        for module in (layers, inference_layers)
        for name, cls in vars(module).items()
        if isinstance(cls, type) and issubclass(cls, keras.layers.Layer) and cls.__module__ == module.__name__
        and not name.endswith("Base")
    }


def test_layers_are_registered():
    classes = _layer_classes()
    assert set(LAYER_CLASSES) <= set(classes)
    registered = keras.saving.get_custom_objects()
    for name, cls in classes.items():
        assert registered.get(f"keras_cvt>{name}") is cls, name
        assert keras.saving.get_registered_name(cls) == f"keras_cvt>{name}"
    # The public names are those classes.
    for name in LAYER_CLASSES:
        assert getattr(keras_cvt, name) is classes[name]


def test_keras_file_roundtrip_cvt13(cvt13_converted, tmp_path):
    model = cvt13_converted
    path = tmp_path / "cvt13.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # no custom_objects: the layers are registered
    assert loaded.name == "cvt13"
    assert loaded.count_params() == model.count_params() == 20_023_208
    for name in ("stage0_embedding", "stage2_cls_token", "stage2_block9"):
        assert type(loaded.get_layer(name)) is type(model.get_layer(name))
        assert loaded.get_layer(name).get_config() == model.get_layer(name).get_config()
    assert loaded.get_layer("stage2_block9").drop_path.rate == pytest.approx(0.1)
    _assert_same_weights(model, loaded)
    x = _pixels((2, 224, 224, 3))
    np.testing.assert_allclose(_np(loaded(x)), _np(model(x)), rtol=0, atol=1e-6)


@pytest.mark.slow
def test_keras_file_loads_in_a_fresh_process_after_import(tiny_reference, tmp_path):
    """A new interpreter needs only `import keras_cvt` to load a `.keras` file."""
    weights, x, logits = tiny_reference
    model = CvT(**TINY_CONFIG, weights=weights, input_shape=(None, None, 3), include_preprocessing=False,
                classifier_activation=None)
    model_path = tmp_path / "tiny.keras"
    model.save(model_path)
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        import keras
        import keras_cvt  # registers the layers
        model = keras.saving.load_model(sys.argv[1])
        np.save(sys.argv[3], keras.ops.convert_to_numpy(model(np.load(sys.argv[2]))))
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-c", script, str(model_path), str(tmp_path / "x.npy"), str(tmp_path / "out.npy")],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = np.load(tmp_path / "out.npy")
    np.testing.assert_allclose(out, _np(model(x)), rtol=0, atol=1e-6)
    np.testing.assert_allclose(out, logits, atol=1e-4)


def test_weights_file_roundtrip_is_exact(tiny_reference, tmp_path):
    weights, x, _ = tiny_reference
    kwargs = dict(TINY_CONFIG, input_shape=(None, None, 3), include_preprocessing=False)
    model = CvT(**kwargs, weights=weights)
    path = tmp_path / "copy.weights.h5"
    model.save_weights(path)
    fresh = CvT(**kwargs)  # random initialisation, then the file
    assert np.abs(_np(fresh(x)) - _np(model(x))).max() > 1e-3
    fresh.load_weights(path)
    _assert_same_weights(model, fresh)
    np.testing.assert_array_equal(_np(fresh(x)), _np(model(x)))
    # The builder's `weights` argument reads the same file.
    np.testing.assert_array_equal(_np(CvT(**kwargs, weights=path)(x)), _np(model(x)))


def test_cvt13_weights_file_roundtrip_is_exact(cvt13_converted, tmp_path):
    path = tmp_path / "cvt13.weights.h5"
    cvt13_converted.save_weights(path)
    _assert_same_weights(cvt13_converted, CvT13(weights=path))


def test_get_config_from_config_roundtrip(tiny_reference):
    weights, x, _ = tiny_reference
    model = CvT(**TINY_CONFIG, weights=weights, input_shape=(None, None, 3), include_preprocessing=False)
    config = model.get_config()
    as_json = json.dumps(config)  # plain JSON, so it can go in a .keras file
    rebuilt = keras.Model.from_config(json.loads(as_json))
    assert json.dumps(rebuilt.get_config()) == as_json
    assert [l.name for l in rebuilt.layers] == [l.name for l in model.layers]
    assert rebuilt.count_params() == model.count_params()
    rebuilt.set_weights(model.get_weights())
    np.testing.assert_array_equal(_np(rebuilt(x)), _np(model(x)))


def test_serialize_keras_object_roundtrip():
    """As keras' applications tests do it."""
    model = CvT(**TINY_CONFIG)
    config = keras.saving.serialize_keras_object(model)
    rebuilt = keras.saving.deserialize_keras_object(config)
    assert len(rebuilt.weights) == len(model.weights)
    assert rebuilt.output_shape == model.output_shape == (None, 10)


def test_clone_model(tiny_reference):
    weights, x, _ = tiny_reference
    model = CvT(**TINY_CONFIG, weights=weights, input_shape=(None, None, 3), include_preprocessing=False)
    clone = keras.models.clone_model(model)
    assert clone is not model
    assert [l.name for l in clone.layers] == [l.name for l in model.layers]
    assert len(clone.weights) == len(model.weights)
    assert all(a is not b for a, b in zip(clone.weights, model.weights))
    clone.set_weights(model.get_weights())
    np.testing.assert_array_equal(_np(clone(x)), _np(model(x)))
    # Cloning onto a new, fixed-size input.
    fixed = keras.models.clone_model(model, input_tensors=keras.Input((64, 80, 3)))
    assert fixed.input_shape == (None, 64, 80, 3)
    fixed.set_weights(model.get_weights())
    np.testing.assert_array_equal(_np(fixed(x)), _np(model(x)))
