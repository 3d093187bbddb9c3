"""A `weights=path` that is no loadable CvT weights file is refused with a ValueError naming it.

Damaged files (emptied, truncated, overwritten, not HDF5) and files of another architecture,
through the builder and through `keras_cvt.weights` directly; never h5py's bare OSError or
RuntimeError, and never a silent load of weights that do not fit.
"""

import shutil

import h5py
import numpy as np
import pytest

from keras_cvt import CvT
from keras_cvt import weights_file
from tests.conftest import FIXTURES, TINY_CONFIG

EXPECTED = "Expected a Keras 3 .weights.h5 file of a keras_cvt model"
TINY_KWARGS = dict(TINY_CONFIG, input_shape=(32, 32, 3), include_preprocessing=False)


def _emptied(data, path):
    path.write_bytes(b"")


def _text(data, path):
    path.write_text("not weights\n" * 20)


def _half(data, path):
    path.write_bytes(data[: len(data) // 2])


def _last_bytes_cut(data, path):
    path.write_bytes(data[:-100])


def _zeroed_tail(data, path):
    # The length HDF5 expects is there, so the file opens; the group tree it points into is gone.
    path.write_bytes(data[: len(data) // 2] + bytes(len(data) - len(data) // 2))


# damage -> what the message says about it
DAMAGES = {
    "emptied": (_emptied, "(0 bytes)"),
    "text": (_text, "file signature not found"),
    "half": (_half, "truncated file"),
    "last 100 bytes cut": (_last_bytes_cut, "truncated file"),
    "tail zeroed": (_zeroed_tail, "bad symbol table node signature"),
}


@pytest.fixture
def damaged(tiny_reference, tmp_path, request):
    damage, words = DAMAGES[request.param]
    path = tmp_path / "damaged.weights.h5"
    damage(tiny_reference[0].read_bytes(), path)
    return str(path), words


def assert_refused(error, path, *words):
    message = str(error.value)
    assert repr(path) in message
    for word in words:
        assert word in message


@pytest.mark.parametrize("damaged", DAMAGES, indirect=True)
@pytest.mark.parametrize("include_top", [True, False])
def test_damaged_file_is_refused_by_the_builder(damaged, include_top):
    path, words = damaged
    with pytest.raises(ValueError) as error:
        CvT(**TINY_KWARGS, include_top=include_top, weights=path)
    assert_refused(error, path, words, EXPECTED, "write it again")


@pytest.fixture(scope="module")
def tiny_model():
    return CvT(**TINY_KWARGS)


@pytest.mark.parametrize("damaged", DAMAGES, indirect=True)
def test_damaged_file_is_refused_by_every_reader(damaged, tiny_model):
    path, words = damaged
    for read in (
        weights_file.resolve_path,
        weights_file.head_classes,
        lambda p: weights_file.check_classes(p, 10),
        lambda p: weights_file.load(tiny_model, p),
    ):
        with pytest.raises(ValueError) as error:
            read(path)
        assert_refused(error, path, words, EXPECTED)


def test_hdf5_file_of_something_else_is_refused(tmp_path, tiny_model):
    # HuggingFace's TensorFlow checkpoint, which needs the converter first, and an empty HDF5 file.
    hf = tmp_path / "tf_model.weights.h5"
    shutil.copyfile(FIXTURES / "hf_tiny_tf_model.h5", hf)
    empty = tmp_path / "empty.weights.h5"
    h5py.File(empty, "w").close()
    for path in map(str, (hf, empty)):
        for include_top in (True, False):
            with pytest.raises(ValueError) as error:
                CvT(**TINY_KWARGS, include_top=include_top, weights=path)
            assert_refused(error, path, "holds no CvT token embedding layers", "python -m keras_cvt.conversion")
        with pytest.raises(ValueError) as error:
            weights_file.load(tiny_model, path)
        assert_refused(error, path, "holds no CvT token embedding layers")


# architecture the file is saved from -> (its stage widths, its number of blocks)
OTHER_ARCHITECTURES = {
    # One more block than the model: Keras alone loads it and ignores the extra block.
    "more blocks": ({"depths": (1, 2, 3)}, (16, 32, 48), 6),
    "fewer blocks": ({"depths": (1, 1, 2)}, (16, 32, 48), 4),
    "other widths": ({"embed_dims": (16, 32, 64), "num_heads": (1, 2, 4)}, (16, 32, 64), 5),
    "fewer stages": (
        {"depths": (1, 2), "embed_dims": (16, 48), "num_heads": (1, 3), "patch_sizes": (7, 3),
         "patch_strides": (4, 2), "patch_paddings": (2, 1)},
        (16, 48),
        3,
    ),
}


@pytest.fixture(scope="module", params=OTHER_ARCHITECTURES)
def other_architecture(request, tmp_path_factory):
    """(path of a file saved from another architecture, its stage widths, its blocks)."""
    changes, widths, blocks = OTHER_ARCHITECTURES[request.param]
    path = str(tmp_path_factory.mktemp("other") / "other.weights.h5")
    CvT(**{**TINY_KWARGS, **changes}).save_weights(path)
    return path, widths, blocks


@pytest.mark.parametrize("include_top", [True, False])
def test_file_of_another_architecture_is_refused_naming_it(other_architecture, include_top):
    path, widths, blocks = other_architecture
    with pytest.raises(ValueError) as error:
        CvT(**TINY_KWARGS, include_top=include_top, weights=path)
    assert_refused(
        error,
        path,
        f"holds a CvT with stage widths {widths} and {blocks} transformer blocks",
        "but model 'cvt' has stage widths (16, 32, 48) and 5 blocks",
    )


def test_sound_files_still_load(tiny_reference, tmp_path):
    # The checks refuse nothing that fits: the converted reference with and without its
    # classifier, and a file the model saved itself.
    path, x, logits = tiny_reference
    model = CvT(**{**TINY_KWARGS, "input_shape": (None, None, 3)}, weights=path, classifier_activation=None)
    np.testing.assert_allclose(np.asarray(model(x)), logits, atol=1e-4)
    backbone = CvT(**TINY_KWARGS, include_top=False, pooling="token", weights=path)
    saved = str(tmp_path / "saved.weights.h5")
    backbone.save_weights(saved)
    again = CvT(**TINY_KWARGS, include_top=False, pooling="token", weights=saved)
    for a, b in zip(backbone.weights, again.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert weights_file.head_classes(path) == 10


def test_classes_left_out_take_the_classifier_of_the_weights(tiny_reference):
    # As HuggingFace's from_pretrained and keras-hub's from_preset do: the weights know their
    # class count (10 here); an explicit count must agree with it, even keras.applications' 1000.
    path, x, logits = tiny_reference
    architecture = {k: v for k, v in TINY_CONFIG.items() if k != "classes"}
    model = CvT(**architecture, weights=path, input_shape=(None, None, 3), include_preprocessing=False,
                classifier_activation=None)
    assert model.output_shape == (None, 10)
    np.testing.assert_allclose(np.asarray(model(x)), logits, atol=1e-4)
    with pytest.raises(ValueError, match=r"has a 10-class classifier, got classes=1000; leave `classes` out"):
        CvT(**architecture, weights=path, classes=1000)
    # Without weights, or without a classifier, keras.applications' default.
    assert CvT(**architecture, input_shape=(32, 32, 3)).output_shape == (None, 1000)
    assert CvT(**architecture, weights=path, include_top=False, pooling="token").output_shape == (None, 48)


def test_classes_default_reads_as_keras_applications(tiny_reference):
    import inspect

    from keras_cvt import CvT13, arguments, sources

    for builder in (CvT, CvT13):
        parameter = inspect.signature(builder).parameters["classes"]
        assert parameter.default == 1000 and parameter.default is arguments.DEFAULT_CLASSES
        assert "classes=1000" in str(inspect.signature(builder))
    resolved = sources.resolve_weights(str(tiny_reference[0]))
    assert (resolved.classes, resolved.path, resolved.entry, resolved.repo) == (10, str(tiny_reference[0]), None, None)
    assert resolved.file() == str(tiny_reference[0])
    assert sources.resolve_weights(None).file() is None
