"""Shared fixtures: the reference checkpoints produced by the original PyTorch code."""

import argparse
import importlib.util
import os
import pathlib

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
# The original code's CvT-13 reference (80 MB, and key lists) is not in the repository: it sits
# in KERAS_CVT_REFERENCE, else in the project's test data (KERAS_CVT_SHARED, by default
# `shared/` beside the checkout) under `reference/`. Tests that need it are skipped where it is
# absent, unless KERAS_CVT_REQUIRE_REFERENCE=1 (.ci/run sets it) makes that a failure.
SHARED = pathlib.Path(os.environ.get("KERAS_CVT_SHARED", ROOT.parent / "shared"))
REFERENCE = pathlib.Path(os.environ.get("KERAS_CVT_REFERENCE", SHARED / "reference"))
REQUIRE_REFERENCE = os.environ.get("KERAS_CVT_REQUIRE_REFERENCE", "") not in ("", "0")


def quick_jax_env(env):
    """`env` for a JAX subprocess that checks imports or numbers, not speed: XLA's LLVM
    optimisation off. On CPU, JAX compiles each weight initializer of each shape, and each
    predict, with XLA: at XLA's default optimisation level most of a minute for the tiny model
    and CvT-13. The outputs move by about 1e-7; tests/test_backends.py checks JAX's numbers at
    the defaults."""
    return {**env, "XLA_FLAGS": " ".join([env.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"])}


def reference_file(name):
    """The path of file `name` of the reference; skips the calling test where it is absent."""
    path = REFERENCE / name
    if not path.is_file():
        reason = (
            f"needs {name} of the original code's reference (the CvT-13 checkpoint and key lists, "
            f"not in the repository), not found in {REFERENCE}; set KERAS_CVT_REFERENCE to its folder"
        )
        if REQUIRE_REFERENCE:
            pytest.fail(f"{reason}; KERAS_CVT_REQUIRE_REFERENCE forbids skipping", pytrace=False)
        pytest.skip(reason)
    return path


def load_quickstart():
    """examples/quickstart.py as a module (its digits, its fine-tuning)."""
    spec = importlib.util.spec_from_file_location("quickstart", ROOT / "examples" / "quickstart.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The tiny original-code model of tests/fixtures.
TINY_CONFIG = {"depths": (1, 2, 2), "embed_dims": (16, 32, 48), "num_heads": (1, 2, 3), "classes": 10}


@pytest.fixture(scope="session")
def tiny_reference(tmp_path_factory):
    """(weights path, NHWC input, logits) of the tiny original-code model."""
    from keras_cvt.conversion import convert

    path = tmp_path_factory.mktemp("tiny") / "tiny.weights.h5"
    convert(FIXTURES / "cvt_tiny_official_perturbed.pth", path)
    io = np.load(FIXTURES / "cvt_tiny_official_perturbed_io.npz")
    return path, io["x"].transpose(0, 2, 3, 1), io["logits"]


@pytest.fixture(scope="session")
def trained_digits(tmp_path_factory):
    """`(weights path, (train images, labels), (held-out images, labels))`: the tiny original-code
    model fine-tuned on scikit-learn's digits as examples/quickstart.py does (6 epochs on one
    device: held-out top-1 about 0.99), for what must be judged on trained weights (int8)."""
    return fine_tune_digits(tmp_path_factory.mktemp("digits"))


def fine_tune_digits(directory):
    """`trained_digits`, written under `directory` (also for benchmarks/keras_quantize.py)."""
    from keras_cvt import training
    from keras_cvt.conversion import convert

    quickstart = load_quickstart()
    converted = directory / "tiny.weights.h5"
    convert(FIXTURES / "cvt_tiny_official_perturbed.pth", converted)
    digits = quickstart.load_digits(0)
    args = argparse.Namespace(seed=0, batch_size=32, epochs=6, learning_rate=3e-3, output_dir=directory)
    quickstart.fine_tune(args, converted, training.make_strategy("none"), digits)
    return directory / "training" / "checkpoints" / "last.weights.h5", *digits


@pytest.fixture(scope="session")
def cvt13_reference(tmp_path_factory):
    """(weights path, NHWC input, logits) of CvT-13 from the original code (the reference)."""
    from keras_cvt.conversion import convert

    checkpoint = reference_file("cvt13_official_perturbed.pth")
    io = np.load(reference_file("cvt13_official_perturbed_io.npz"))
    path = tmp_path_factory.mktemp("cvt13") / "cvt13.weights.h5"
    convert(checkpoint, path, model="cvt13")
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


@pytest.fixture
def tiny_variant(monkeypatch):
    """The tiny model as a published variant, for the command lines' `--model tiny`: its record
    in `keras_cvt.architectures.VARIANTS` and its builder in `keras_cvt.variants.BUILDERS`."""
    import functools

    from keras_cvt import CvT, architectures, variants

    tiny = architectures.Variant(
        "tiny",
        "Tiny",
        **{k: TINY_CONFIG[k] for k in ("depths", "embed_dims", "num_heads")},
        drop_path_rate=0.0,
        weight_decay=0.05,
        title="tiny",
    )
    monkeypatch.setitem(architectures.VARIANTS, "tiny", tiny)
    monkeypatch.setitem(variants.BUILDERS, "tiny", functools.partial(CvT, **tiny.config, name="tiny"))
    return tiny
