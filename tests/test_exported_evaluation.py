"""keras_cvt.export.load_exported (an exported file on its runtime) and examples/evaluate.py
--exported: what they refuse, and the same top-1 as the Keras model on trained weights."""

import importlib.util
import re
import sys

import numpy as np
import onnx
import pytest
import tensorflow as tf
from onnx import TensorProto, helper, numpy_helper

from keras_cvt import CvT
from keras_cvt.export import export, load_exported
from tests.conftest import ROOT, TINY_CONFIG
from tests.test_calibration import write_png

SIZE = 32
CLASSES = 10
# The hand-made file's classifier: the mean colour of the image times this matrix, softmax.
WEIGHTS = np.random.default_rng(0).normal(size=(3, CLASSES)).astype(np.float32) / 50


def load_evaluate():
    spec = importlib.util.spec_from_file_location("evaluate", ROOT / "examples" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_onnx(
    path, input_name="pixels", input_shape=(None, SIZE, SIZE, 3), output_name="probabilities", image_axes=(1, 2)
):
    """A small ONNX classifier of our files' interface (or another, to be refused): softmax of
    the image's mean colour (over `image_axes`) times `WEIGHTS`."""
    nodes = [
        helper.make_node("ReduceMean", [input_name], ["mean"], axes=list(image_axes), keepdims=0),
        helper.make_node("MatMul", ["mean", "weights"], ["scores"]),
        helper.make_node("Softmax", ["scores"], [output_name], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "mean_colour",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [None, CLASSES])],
        [numpy_helper.from_array(WEIGHTS, "weights")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    return write_onnx(tmp_path_factory.mktemp("exported") / "mean_colour.onnx")


def test_load_exported_runs_an_onnx_file(onnx_file):
    classifier = load_exported(onnx_file)
    assert (classifier.format, classifier.input_size, classifier.classes) == ("onnx", (SIZE, SIZE), CLASSES)
    pixels = np.random.default_rng(1).uniform(0, 255, (4, SIZE, SIZE, 3))
    scores = pixels.mean(axis=(1, 2)) @ WEIGHTS
    expected = np.exp(scores - scores.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(classifier(pixels), expected, rtol=0, atol=1e-6)
    assert classifier(np.zeros((0, SIZE, SIZE, 3))).shape == (0, CLASSES)
    with pytest.raises(ValueError, match=r"must have shape \(n, 32, 32, 3\): .*mean_colour.onnx takes 32 x 32"):
        classifier(np.zeros((1, 48, 48, 3)))
    with pytest.raises(ValueError, match=r"must have shape \(n, height, width, 3\) \(RGB\), got shape \(32, 32, 3\)"):
        classifier(np.zeros((SIZE, SIZE, 3)))
    with pytest.raises(TypeError, match="must be numbers"):
        classifier(np.full((1, SIZE, SIZE, 3), "a"))


def _saved_model_without_pixels(path):
    module = tf.Module()
    module.f = tf.function(lambda x: {"y": x + 1}, input_signature=[tf.TensorSpec([None], tf.float32)])
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.f})


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda p: p / "missing.onnx", ValueError, "exported file not found: '.*missing.onnx'"),
        (lambda p: (p / "m.pt").write_bytes(b"x") and p / "m.pt", ValueError,
         r"m.pt' is no exported classifier: expected a file ending in one of \['.onnx', '.tflite', '.xml'\] or a "
         "SavedModel folder"),
        (lambda p: (p / "folder").mkdir() or p / "folder", ValueError, "is a folder but not a SavedModel"),
        (lambda p: _saved_model_without_pixels(p / "sm") or p / "sm", ValueError,
         r"no SavedModel of keras_cvt.export: it has no 'predict_pixels' signature \(its signatures: \['serving_default'\]\)"),
        (lambda p: p / "t.onnx", ValueError, "ONNX Runtime cannot read .*t.onnx"),
        (lambda p: (p / "g.tflite").write_bytes(b"\0" * 64) and p / "g.tflite", ValueError, "LiteRT cannot read .*g.tflite"),
        (lambda p: (p / "g.xml").write_text("<net>") and p / "g.xml", ValueError, r"OpenVINO cannot read .*g.xml \(and its .bin\)"),
        (lambda p: write_onnx(p / "nchw.onnx", input_shape=(None, 3, SIZE, SIZE), image_axes=(2, 3)), ValueError,
         r"nchw.onnx is no classifier exported by keras_cvt: expected one input `pixels` \(float32, \[\?, height, width, "
         r"3\]\) and one output `probabilities` \(\[\?, classes\]\), its input is 'pixels' of shape \[\?, 3, 32, 32\]"),
        (lambda p: write_onnx(p / "batch.onnx", input_shape=(1, SIZE, SIZE, 3)), ValueError,
         r"its input is 'pixels' of shape \[1, 32, 32, 3\]"),
        (lambda p: write_onnx(p / "x.onnx", input_name="x"), ValueError, r"its input is 'x' of shape \[\?, 32, 32, 3\]"),
        (lambda p: write_onnx(p / "l.onnx", output_name="logits"), ValueError, r"its output is 'logits' of shape \[\?, 10\]"),
        (lambda p: 3, TypeError, "`path` must be a path, got int"),
    ],
)
def test_load_exported_refusals(onnx_file, tmp_path, make, error, message):
    (tmp_path / "t.onnx").write_bytes(onnx_file.read_bytes()[:100])  # truncated
    with pytest.raises(error, match=message):
        load_exported(make(tmp_path))


@pytest.mark.parametrize("module, suffix, install", [
    ("onnxruntime", ".onnx", "pip install onnxruntime, or keras-cvt[int8]"),
    ("openvino", ".xml", "pip install openvino, or keras-cvt[export]"),
])
def test_load_exported_names_a_missing_runtime(tmp_path, monkeypatch, module, suffix, install):
    path = tmp_path / f"m{suffix}"
    path.write_bytes(b"x")
    monkeypatch.setitem(sys.modules, module, None)  # what an absent package does
    with pytest.raises(ImportError, match=rf"m\{suffix}' needs the {module} package: {re.escape(install)}$"):
        load_exported(path)


def write_folder(root, images, labels, per_class):
    """An image folder: `per_class` PNGs of each label, the first ones of `images` in order."""
    for label in sorted(set(labels.tolist())):
        (root / f"class_{label}").mkdir(parents=True)
        for index in np.flatnonzero(labels == label)[:per_class]:
            write_png(root / f"class_{label}" / f"{index}.png", 0, 0, pixels=images[index])
    return root


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--exported", "{tmp}/missing.onnx"], "exported file not found: '{tmp}/missing.onnx'"),
        (["--exported", "{tmp}/ten"], "'{tmp}/ten' is a folder but not a SavedModel"),
        (["--exported", "{tmp}/m.pt"], "'{tmp}/m.pt' is no exported classifier: expected a file ending in"),
        (["--exported", "{onnx}"], "the data has 3 classes, --exported {onnx} 10"),
        (["--exported", "{onnx}", "--image-size", "48"], "--image-size 48, but --exported {onnx} takes 32 x 32 images"),
    ],
)
def test_evaluate_exported_refusals(onnx_file, tmp_path, capsys, argv, message):
    evaluate = load_evaluate()
    rng = np.random.default_rng(0)
    write_folder(tmp_path / "three", rng.integers(0, 255, (3, 8, 8, 3), np.uint8), np.arange(3), 1)
    (tmp_path / "ten").mkdir()
    (tmp_path / "m.pt").write_bytes(b"x")
    values = {"tmp": str(tmp_path), "onnx": str(onnx_file)}
    argv = [a.format(**values) for a in argv]
    # --weights imagenet would be a download: nothing is built with --exported.
    assert evaluate.main(["--image-folder", str(tmp_path / "three"), "--weights", "imagenet"] + argv) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith("evaluate.py: error: ") and message.format(**values) in error[-1], error


def test_evaluate_exported_refuses_a_strategy(onnx_file, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_evaluate().parse_args(["--image-folder", str(tmp_path), "--exported", str(onnx_file), "--strategy", "none"])
    assert exit_info.value.code == 2
    assert "--strategy applies to the Keras model, not to --exported files" in capsys.readouterr().err


@pytest.mark.slow  # the trained digits (shared with tests/test_int8.py), then two ONNX exports
def test_evaluate_exported_matches_the_keras_model(trained_digits, tmp_path, capsys):
    weights, (train_images, _), (images, labels) = trained_digits
    architecture = {key: value for key, value in TINY_CONFIG.items() if key != "classes"}
    model = CvT(**architecture, classes=CLASSES, weights=str(weights), input_shape=(None, None, 3))
    folder = write_folder(tmp_path / "digits", images, labels, per_class=3)
    calibration = train_images[:64].astype(np.float32)
    float_file = export(model, tmp_path / "tiny.onnx", format="onnx", input_size=SIZE)
    int8_file = export(
        model, tmp_path / "tiny_int8.onnx", format="onnx", input_size=SIZE, quantize="int8", calibration=calibration
    )
    evaluate = load_evaluate()
    common = ["--image-folder", str(folder), "--weights", str(weights), "--batch-size", "8"]
    custom = ["--depths", "1,2,2", "--embed-dims", "16,32,48", "--num-heads", "1,2,3"]
    keras_top1, keras_top5, count = evaluate.run(
        evaluate.parse_args(common + custom + ["--image-size", str(SIZE), "--strategy", "none"])
    )
    # The file fixes the size: no --image-size needed.
    float_top1, float_top5, _ = evaluate.run(evaluate.parse_args(common + ["--exported", float_file]))
    int8_top1, int8_top5, _ = evaluate.run(evaluate.parse_args(common + ["--exported", int8_file, "--image-size", str(SIZE)]))
    lines = capsys.readouterr().out.strip().splitlines()
    assert count == 30
    assert keras_top1 >= 0.9  # trained weights
    assert (float_top1, float_top5) == (keras_top1, keras_top5)
    assert abs(int8_top1 - keras_top1) <= 1 / count + 1e-9, (int8_top1, keras_top1)
    assert lines[-2:] == [
        f"{float_file}: top-1 {float_top1:.4f} top-5 {float_top5:.4f} (30 images)",
        f"{int8_file}: top-1 {int8_top1:.4f} top-5 {int8_top5:.4f} (30 images)",
    ]
    assert f"{weights}: top-1 {keras_top1:.4f} top-5 {keras_top5:.4f} (30 images)" in lines
