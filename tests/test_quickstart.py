"""examples/quickstart.py, README's first command: conversion, fine-tuning, serving, end to end."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT, TINY_CONFIG, load_quickstart

QUICKSTART = ROOT / "examples" / "quickstart.py"
ARCHITECTURE = {key: value for key, value in TINY_CONFIG.items() if key != "classes"}


def keras_probabilities(model, inputs, image_size, crop_ratio):
    """The model's output for decoded images, or image files, transformed as served."""
    from keras_cvt import images, transforms

    transform = transforms.evaluation_transform(image_size, crop_ratio)
    decoded = [images.load_image(str(i)) if isinstance(i, (str, os.PathLike)) else i for i in inputs]
    return model.predict(np.stack([transform(image).numpy() for image in decoded]), verbose=0)


def assert_served_like_keras(rows, probabilities):
    # Scores and classes of serving_default (a process without Keras) against the Keras model.
    for row, p in zip(rows, probabilities, strict=True):
        top = np.argsort(-p, kind="stable")[: len(row["classes"])]
        assert row["classes"] == top.tolist(), row["file"]
        np.testing.assert_allclose(row["scores"], p[top], atol=1e-5, rtol=0)


@pytest.mark.slow
def test_quickstart_converts_fine_tunes_and_serves(tmp_path):
    import keras_cvt

    out = tmp_path / "run"
    # From another directory, as a user would run it from anywhere; 3 epochs instead of 12.
    result = subprocess.run(
        [sys.executable, str(QUICKSTART), "--output-dir", str(out), "--epochs", "3", "--png-files", "6"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for step in ("[1/3", "[2/3", "[3/3", "Epoch 3/3", "Done."):
        assert step in result.stdout
    summary = json.loads((out / "summary.json").read_text())

    assert summary["parity"]["max_abs_difference"] < 1e-4
    training = summary["training"]
    assert len(training["devices"]) >= 2  # MirroredStrategy over logical CPUs (or the GPUs)
    assert training["held_out_images"] == 360
    assert training["top1"] >= 0.85, training
    assert f"held-out top-1 {training['top1']:.4f}" in result.stdout

    rows = summary["serving"]["images"]
    files = [pathlib.Path(row["file"]) for row in rows]
    assert [f.parent for f in files] == [out / "images"] * 6
    assert all(f.suffix == ".png" and f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in files)
    assert all(row["labels"] == [str(c) for c in row["classes"]] for row in rows)
    weights = out / "training" / "checkpoints" / "last.weights.h5"
    model = keras_cvt.CvT(**ARCHITECTURE, classes=10, weights=str(weights), input_shape=(None, None, 3))
    assert_served_like_keras(rows, keras_probabilities(model, files, 32, None))
    # The accuracy reported is these weights' on the held-out digits, each counted once (not
    # the padding that evens them out over the replicas).
    _, (images, labels) = load_quickstart().load_digits(0)
    top1 = np.mean(keras_probabilities(model, images, 32, None).argmax(axis=1) == labels)
    assert training["top1"] == pytest.approx(top1, abs=1e-6)
    assert (out / "serving" / "digits" / "1" / "saved_model.pb").is_file()
    assert str(out / "serving" / "digits" / "1") in result.stdout

    # The pictures: decodable PNG files of their promised sizes, and where they are, printed.
    from keras_cvt import images

    pictures = {
        "training curves": ("training_curves.png", (360, 900, 3)),
        "classified digits": ("served_digits.png", (150, 6 * 130, 3)),  # one row of the 6 served
        "confusion matrix": ("confusion_matrix.png", (440, 480, 3)),
    }
    for name, (file_name, shape) in pictures.items():
        path = out / "pictures" / file_name
        assert summary["outputs"][name] == str(path)
        assert f"  {name}: {path}" in result.stdout
        assert images.load_image(str(path)).shape == shape

    # What it prints is what it does and found: the library noise is gone (issue 25).
    for noise in (
        "Your input ran out of data",
        "AutoGraph could not transform",
        "GeneratorDatasetOp",
        "Could not find cuda drivers",
        "absl::InitializeLog",
    ):
        assert noise not in result.stdout + result.stderr, noise


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--weights", "imagenet22k"], "--weights must be 'imagenet' or a .weights.h5 file"),
        (["--weights", "missing.weights.h5"], "--weights file not found: missing.weights.h5"),
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--cpu-replicas", "0"], "--cpu-replicas must be at least 1"),
        (["--learning-rate", "3"], "--learning-rate must be in (0, 1)"),
    ],
)
def test_bad_arguments_are_refused_up_front(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_quickstart().parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_used_output_dir_is_refused(tmp_path, capsys):
    (tmp_path / "summary.json").write_text("{}")
    with pytest.raises(SystemExit) as exit_info:
        load_quickstart().parse_args(["--output-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert f"--output-dir {tmp_path} exists and is not empty" in capsys.readouterr().err
    default = load_quickstart().parse_args([]).output_dir
    assert default.parent == pathlib.Path("runs") and default.name.startswith("quickstart-")


def test_the_sample_photos_are_small_free_imagenet_photos():
    quickstart = load_quickstart()
    photos = sorted(quickstart.PHOTOS.glob("*.jpg"))
    assert [p.name for p in photos] == ["cat.jpg", "coffee.jpg", "rocket.jpg"]
    assert all(p.stat().st_size < 60_000 for p in photos)
    notes = (quickstart.PHOTOS / "README.md").read_text()
    assert all(p.name in notes for p in photos) and "CC0" in notes and "public domain" in notes


@pytest.mark.slow
def test_pretrained_path_serves_cvt13_on_the_sample_photos(cvt13_reference, tmp_path, capsys, monkeypatch):
    # `--weights` with a CvT-13 file (here the original code's reference converted; with
    # network, `imagenet`): the photos go through serving_default, labelled with ImageNet names.
    import keras_cvt
    from keras_cvt import pretrained

    weights, _, _ = cvt13_reference
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")  # what main() would set for good
    out = tmp_path / "run"
    assert load_quickstart().main(["--weights", str(weights), "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["parity"]["max_abs_difference"] < 1e-4
    assert "training" not in summary
    rows = summary["serving"]["images"]
    assert [pathlib.Path(row["file"]).name for row in rows] == ["cat.jpg", "coffee.jpg", "rocket.jpg"]
    names = {top[0][1] for top in keras_cvt.decode_predictions(np.eye(1000), top=1)}
    assert all(len(row["labels"]) == 5 and set(row["labels"]) <= names for row in rows)
    assert all(f"{row['scores'][0]:7.2%}  {row['labels'][0]}" in printed for row in rows)
    model = keras_cvt.CvT13(weights=str(weights), input_shape=(None, None, 3))
    # A CvT-13 file's transform: the default one (keras_cvt.pretrained.transform_for).
    transform = pretrained.transform_for("cvt13", str(weights))
    files = [row["file"] for row in rows]
    assert_served_like_keras(rows, keras_probabilities(model, files, transform.size, transform.crop_ratio))


def test_quiet_stderr_drops_exactly_the_known_tensorflow_lines(capfd):
    quickstart = load_quickstart()
    noise = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1796611136.459711   24749 cudart_stub.cc:31] Could not find cuda drivers on your machine, "
        "GPU will not be used.",
        "E0000 00:00:1796611152.814628   24749 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: "
        "Failed call to cuInit: UNKNOWN ERROR (303)",
        "W0000 00:00:1796611189.162699   24749 dataset.cc:997] Input of GeneratorDatasetOp::Dataset will not be "
        "optimized because the dataset does not implement the AsGraphDefInternal() method needed to apply "
        "optimizations.",
    ]
    kept = [
        "E0000 00:00:1796611152.814628   24749 cuda_platform.cc:52] failed call to cuInit: CUDA_ERROR_OUT_OF_MEMORY",
        "W0000 00:00:1796611189.162699   24749 dataset.cc:997] something else about GeneratorDatasetOp",
        "Traceback (most recent call last):",
    ]
    with quickstart.quiet_stderr(verbose=False):
        for line in noise + kept:
            os.write(2, (line + "\n").encode())
    captured = capfd.readouterr()
    assert captured.err.splitlines() == kept
    assert "(4 TensorFlow start-up and tf.data log lines hidden; --verbose shows them)" in captured.out
    with quickstart.quiet_stderr(verbose=True):
        os.write(2, (noise[0] + "\n").encode())
    assert capfd.readouterr().err == noise[0] + "\n"
