"""The proof that the port is the original model: logits of the original PyTorch code."""

import numpy as np
import pytest

from keras_cvt import CvT, CvT13, imagenet_normalize, preprocess_input
from keras_cvt.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from tests.conftest import TINY_CONFIG

TOLERANCE = 1e-4


def test_cvt13_reproduces_original_logits(cvt13_reference):
    path, x, logits = cvt13_reference
    model = CvT13(weights=path, include_preprocessing=False, classifier_activation=None)
    out = model.predict(x, verbose=0)
    assert out.shape == logits.shape == (2, 1000)
    assert np.abs(out - logits).max() <= TOLERANCE


def test_tiny_reproduces_original_logits_non_square(tiny_reference):
    path, x, logits = tiny_reference
    assert x.shape == (2, 64, 80, 3)
    model = CvT(
        **TINY_CONFIG,
        weights=path,
        input_shape=(None, None, 3),
        include_preprocessing=False,
        classifier_activation=None,
    )
    out = model.predict(x, verbose=0)
    assert np.abs(out - logits).max() <= TOLERANCE


@pytest.mark.slow
def test_builtin_preprocessing_equals_original_normalisation(cvt13_reference):
    """include_preprocessing=True on [0, 255] pixels == original model on normalised input."""
    path, x, _ = cvt13_reference
    pixels = np.random.RandomState(1).uniform(0, 255, size=(2, 224, 224, 3)).astype("float32")
    raw = CvT13(weights=path, classifier_activation=None)
    normalised = CvT13(weights=path, include_preprocessing=False, classifier_activation=None)
    a = raw.predict(pixels, verbose=0)
    b = normalised.predict(imagenet_normalize(pixels), verbose=0)
    assert np.abs(a - b).max() <= TOLERANCE


def _pixels_of(normalised):
    """The [0, 255] RGB pixels whose ImageNet normalisation is `normalised`."""
    return (normalised * np.asarray(IMAGENET_STD, "float32") + np.asarray(IMAGENET_MEAN, "float32")) * 255.0


def test_keras_idiom_reproduces_original_logits(tiny_reference):
    """`model.predict(preprocess_input(x))` on pixels, the keras.applications idiom, gives the
    original model's logits for the default model, which normalises inside (so
    preprocess_input must not normalise too); `imagenet_normalize` serves the model built
    without that normalisation."""
    path, x, logits = tiny_reference
    pixels = _pixels_of(x)
    np.testing.assert_allclose(imagenet_normalize(pixels), x, atol=1e-5)
    kwargs = dict(TINY_CONFIG, weights=path, input_shape=(None, None, 3), classifier_activation=None)
    model = CvT(**kwargs)
    idiom = model.predict(preprocess_input(pixels), verbose=0)
    assert np.abs(idiom - logits).max() <= TOLERANCE
    assert np.abs(idiom - model.predict(pixels, verbose=0)).max() <= TOLERANCE
    original = CvT(**kwargs, include_preprocessing=False)
    assert np.abs(original.predict(imagenet_normalize(pixels), verbose=0) - logits).max() <= TOLERANCE
