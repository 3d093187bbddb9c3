"""keras' own `keras/src/applications/applications_test.py`, adapted to CvT13 and CvT21.

Adapted where CvT differs by design (each difference is in README): the models are NHWC
whatever `keras.config.image_data_format()` says, so the channels-first cases keep channels
last and check that pooling still reads the right axes; no weights are downloaded, so the
"elephant" prediction is replaced by the keras idiom `model.predict(preprocess_input(x))`
equalling the raw-pixel call (tests/test_reference_parity.py ties that idiom to the original
model's logits).
"""

import contextlib
import inspect
import re

import keras
import numpy as np
import pytest
from keras.src.saving import serialization_lib

from keras_cvt import CvT, CvT13, CvT21, decode_predictions, imagenet_normalize, preprocess_input
from keras_cvt.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from tests.conftest import TINY_CONFIG

APPS = [CvT13, CvT21]
LAST_DIM = 384  # both variants' last stage width
TINY_BACKBONE = {k: v for k, v in TINY_CONFIG.items() if k != "classes"}


@contextlib.contextmanager
def image_data_format(data_format):
    """Sets the global image data format, and restores the previous one whatever happens."""
    previous = keras.config.image_data_format()
    keras.config.set_image_data_format(data_format)
    try:
        yield
    finally:
        keras.config.set_image_data_format(previous)


@pytest.fixture(scope="module", params=APPS, ids=lambda app: app.__name__)
def default_model(request):
    """`app(weights=None)` with every default argument, built once per app."""
    return request.param, request.param(weights=None)


def test_application_base(default_model):
    app, model = default_model
    assert model.input_shape == (None, 224, 224, 3)
    x = np.random.RandomState(0).uniform(0, 255, (1, 224, 224, 3)).astype("float32")
    # The model normalises inside, so keras' `preprocess_input(x)` before it is a pass-through.
    assert preprocess_input(x) is x
    decoded = decode_predictions(keras.ops.convert_to_numpy(model(preprocess_input(x))))[0]
    assert len(decoded) == 5 and all(len(entry) == 3 for entry in decoded)
    # Can be serialized and deserialized.
    config = serialization_lib.serialize_keras_object(model)
    reconstructed = serialization_lib.deserialize_keras_object(config)
    assert len(model.weights) == len(reconstructed.weights)
    assert reconstructed.name == model.name == app.__name__.lower()


def test_application_classifier_activation(default_model):
    _, model = default_model
    assert model.layers[-1].activation.__name__ == "softmax"


@pytest.mark.parametrize("app, channels", [(CvT13, 1), (CvT21, 4)], ids=["CvT13-1", "CvT21-4"])
def test_application_notop_variable_input_channels(app, channels):
    """As in keras, a channel count the built-in normalisation does not fit builds without
    it (here with a warning) rather than failing."""
    with pytest.warns(UserWarning, match=f"the input has {channels} channels: the model takes it as it is"):
        model = app(weights=None, include_top=False, input_shape=(None, None, channels))
    assert list(model.outputs[0].shape) == [None, None, None, LAST_DIM]
    assert "preprocessing" not in [layer.name for layer in model.layers]
    assert model.get_layer("stage0_embedding").proj.kernel.shape[2] == channels


@pytest.mark.parametrize("app", APPS, ids=lambda app: app.__name__)
def test_application_notop_custom_input_shape(app):
    model = app(weights=None, include_top=False, input_shape=(123, 123, 3))
    assert list(model.outputs[0].shape) == [None, 8, 8, LAST_DIM]


@pytest.mark.parametrize("app", APPS, ids=lambda app: app.__name__)
def test_application_notop_custom_input_tensor(app):
    inputs_custom = keras.Input(shape=(200, 200, 4), name="custom_input")
    inputs_custom = keras.layers.Conv2D(3, (2, 2), padding="valid", strides=(2, 2))(inputs_custom)
    model = app(weights=None, include_top=False, input_tensor=inputs_custom)
    assert list(model.outputs[0].shape)[-1] == LAST_DIM
    assert model.input_shape == (None, 200, 200, 4)


@pytest.mark.parametrize("app", APPS, ids=lambda app: app.__name__)
def test_application_pooling_under_channels_first(app):
    """keras runs this under both data formats; channels last is tests/test_cvt.py's."""
    before = keras.config.image_data_format()
    with image_data_format("channels_first"):
        assert keras.config.image_data_format() == "channels_first"
        model = app(weights=None, include_top=False, pooling="max", input_shape=(64, 64, 3))
    assert keras.config.image_data_format() == before
    assert list(model.outputs[0].shape) == [None, LAST_DIM]


@pytest.mark.parametrize("app", APPS, ids=lambda app: app.__name__)
def test_application_classes_name_and_activation(app):
    model = app(weights=None, classes=np.int64(10), classifier_activation=None, name="my_cvt",
                input_shape=(32, 32, 3))
    assert model.name == "my_cvt"
    assert model.output_shape == (None, 10)
    assert model.layers[-1].activation.__name__ == "linear"


def test_pooling_reads_the_channels_last_axes_under_channels_first():
    """The global setting is not consulted: under channels_first, the last map and its
    avg/max pooling are what the channels-last build gives, number for number."""
    before = keras.config.image_data_format()
    x = np.random.RandomState(0).uniform(0, 255, (2, 64, 80, 3)).astype("float32")
    kwargs = dict(TINY_BACKBONE, include_top=False, input_shape=(None, None, 3))
    reference = CvT(**kwargs)
    expected = keras.ops.convert_to_numpy(reference(x))
    assert expected.shape == (2, 4, 5, 48)
    with image_data_format("channels_first"):
        for pooling, reduce in (("avg", np.mean), ("max", np.max)):
            model = CvT(**kwargs, pooling=pooling)
            assert model.output_shape == (None, 48)
            model.set_weights(reference.get_weights())
            last_map = keras.Model(model.input, model.get_layer("stage2_output").output)
            np.testing.assert_allclose(keras.ops.convert_to_numpy(last_map(x)), expected, atol=1e-6)
            np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x)), reduce(expected, axis=(1, 2)),
                                       atol=1e-5)
    assert keras.config.image_data_format() == before


def test_preprocess_input_is_keras_pass_through():
    """Same signature as keras' ConvNeXt/EfficientNetV2 `preprocess_input`, and like theirs it
    returns its input: the models normalise inside."""
    assert inspect.signature(preprocess_input) == inspect.signature(
        keras.applications.convnext.preprocess_input
    )
    x = np.random.RandomState(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    assert preprocess_input(x) is x
    tensor = keras.ops.convert_to_tensor(x)
    assert preprocess_input(tensor, data_format="channels_last") is tensor
    with pytest.raises(ValueError, match="`data_format` must be None or 'channels_last', got data_format='channels_first'"):
        preprocess_input(x, data_format="channels_first")


def test_imagenet_normalize():
    pixels = np.random.RandomState(0).randint(0, 256, (2, 8, 8, 3)).astype("uint8")
    expected = (pixels / 255.0 - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)
    out = imagenet_normalize(pixels)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-5)
    tensor_out = imagenet_normalize(keras.ops.convert_to_tensor(pixels))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(tensor_out), expected, atol=1e-5)
    np.testing.assert_allclose(imagenet_normalize(pixels.tolist()), expected, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 8, 8, 1), (2, 8, 8, 4), (2, 3, 8, 8)])
def test_imagenet_normalize_refuses_other_than_rgb_channels_last(shape):
    """3 statistics would broadcast against 1 channel into a 3-channel result, silently."""
    with pytest.raises(ValueError, match=f"3 channels on the last axis, got shape {re.escape(str(shape))}"):
        imagenet_normalize(np.zeros(shape, "float32"))
    with pytest.raises(ValueError, match="got data_format='channels_first'"):
        imagenet_normalize(np.zeros((2, 8, 8, 3), "float32"), data_format="channels_first")
