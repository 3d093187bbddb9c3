"""Shared fixtures: the reference checkpoints produced by the original PyTorch code."""

import os
import pathlib

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
# ../shared sits beside the checkout, in CI as on developer machines; KERAS_CVT_SHARED moves it.
SHARED = pathlib.Path(os.environ.get("KERAS_CVT_SHARED", ROOT.parent / "shared"))
REFERENCE = SHARED / "reference"

# The tiny original-code model of tests/fixtures (a copy of shared/reference's).
TINY_CONFIG = {"depths": (1, 2, 2), "embed_dims": (16, 32, 48), "num_heads": (1, 2, 3), "classes": 10}


@pytest.fixture(scope="session")
def tiny_reference(tmp_path_factory):
    """(weights path, NHWC input, logits) of the tiny original-code model."""
    from weights_conversion import convert

    path = tmp_path_factory.mktemp("tiny") / "tiny.weights.h5"
    convert(FIXTURES / "cvt_tiny_official_perturbed.pth", path)
    io = np.load(FIXTURES / "cvt_tiny_official_perturbed_io.npz")
    return path, io["x"].transpose(0, 2, 3, 1), io["logits"]


@pytest.fixture(scope="session")
def cvt13_reference(tmp_path_factory):
    """(weights path, NHWC input, logits) of CvT-13 from the original code (shared/reference)."""
    from weights_conversion import convert

    checkpoint = REFERENCE / "cvt13_official_perturbed.pth"
    assert checkpoint.is_file(), f"reference checkpoint missing: {checkpoint}"
    path = tmp_path_factory.mktemp("cvt13") / "cvt13.weights.h5"
    convert(checkpoint, path, model="cvt13")
    io = np.load(REFERENCE / "cvt13_official_perturbed_io.npz")
    return path, io["x"].transpose(0, 2, 3, 1), io["logits"]


def weights_file_arrays(path):
    """Every array of a Keras `.weights.h5` file, keyed by its path inside the file."""
    import h5py

    arrays = {}

    def collect(name, item):
        if isinstance(item, h5py.Dataset):
            arrays[name] = item[()]

    with h5py.File(path, "r") as f:
        f.visititems(collect)
    return arrays


def assert_same_weights_files(path_a, path_b):
    """Both `.weights.h5` files hold the same variables with bit-identical values."""
    a, b = weights_file_arrays(path_a), weights_file_arrays(path_b)
    assert sorted(a) == sorted(b)
    differing = [name for name in a if a[name].shape != b[name].shape or not np.array_equal(a[name], b[name])]
    assert differing == []
