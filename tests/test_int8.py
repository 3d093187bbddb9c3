"""int8 exports (keras_cvt.export.int8): accuracy on trained weights on every runtime, the float
export they start from unchanged, and what the command line and the API refuse."""

import sys

import numpy as np
import openvino
import pytest

from keras_cvt import CvT, CvT13
from keras_cvt.export import export, load_exported
from keras_cvt.export import cli as export_cli
from keras_cvt.export import calibration
from keras_cvt.export.openvino_projections import batch_first_projections
from tests.conftest import TINY_CONFIG
from tests.test_calibration import write_png

ARCHITECTURE = {key: value for key, value in TINY_CONFIG.items() if key != "classes"}
DIGIT_SIZE = 32
# The issue's targets: int8 top-1 within half a point of float32's, and the same class as
# float32 for at least 98% of the images (360 held-out digits: at most 7 differ). Half a point
# is 1.8 of the 360 digits, and the fine-tuning is not bit-reproducible from run to run
# (multi-threaded float reductions), so each run quantizes a slightly different model: ONNX
# Runtime's int8 lost 1 image net in one run (98.61% to 98.33%) and 2 in another (99.17% to
# 98.61%). The test allows 2 images (0.56 point) either way, the finest bound this set holds
# beside that noise; benchmarks/int8_accuracy.py holds the fine-tuned CvT-13 to half a point.
TOP1_IMAGES = 2
AGREEMENT = 0.98
CALIBRATION = 300  # of the training digits, never the held-out ones


@pytest.fixture(scope="module")
def tiny_model(tiny_reference):
    weights, _, _ = tiny_reference
    return CvT(**ARCHITECTURE, classes=10, weights=str(weights), input_shape=(None, None, 3))


@pytest.fixture(scope="module")
def digits_model(trained_digits):
    weights, _, _ = trained_digits
    return CvT(**ARCHITECTURE, classes=10, weights=str(weights), input_shape=(None, None, 3))


@pytest.mark.slow  # the fine-tuning (a minute), then an export and a calibration per runtime
@pytest.mark.parametrize("format", ["openvino", "onnx", "tflite"])
def test_int8_keeps_the_accuracy_of_the_trained_model(format, digits_model, trained_digits, tmp_path):
    _, (train_images, _), (images, labels) = trained_digits
    pixels = images.astype(np.float32)
    calibration = train_images[np.random.default_rng(0).choice(len(train_images), CALIBRATION, replace=False)]
    suffix = {"onnx": ".onnx", "openvino": ".xml", "tflite": ".tflite"}[format]
    float_path = export(digits_model, tmp_path / f"f32{suffix}", format=format, input_size=DIGIT_SIZE)
    int8_path = export(
        digits_model,
        tmp_path / f"int8{suffix}",
        format=format,
        input_size=DIGIT_SIZE,
        quantize="int8",
        calibration=calibration,
    )
    keras_probabilities = digits_model.predict(pixels, verbose=0)
    float_probabilities = load_exported(float_path)(pixels)
    int8_probabilities = load_exported(int8_path)(pixels)
    # The float32 file the quantizer starts from is the Keras model's.
    np.testing.assert_allclose(float_probabilities, keras_probabilities, rtol=0, atol=1e-5)
    float_correct = int(np.sum(float_probabilities.argmax(1) == labels))
    int8_correct = int(np.sum(int8_probabilities.argmax(1) == labels))
    agreement = np.mean(int8_probabilities.argmax(1) == float_probabilities.argmax(1))
    assert float_correct >= 0.95 * len(labels)  # trained weights: flat logits would make any quantizer look right
    assert abs(int8_correct - float_correct) <= TOP1_IMAGES, (float_correct, int8_correct, len(labels))
    assert agreement >= AGREEMENT, agreement
    # int8 really: every Dense layer's kernel (6 per block, and the head) is stored in int8.
    assert _int8_matrices(format, int8_path) >= 6 * sum(TINY_CONFIG["depths"]) + 1
    assert _int8_matrices(format, float_path) == 0


def _int8_matrices(format, path):
    """How many constant matrices (2 or more dimensions) of the file are int8."""
    if format == "onnx":
        import onnx

        initializers = onnx.load(path).graph.initializer
        return sum(t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2 for t in initializers)
    if format == "openvino":
        ops = openvino.Core().read_model(path).get_ordered_ops()
        return sum(
            op.get_type_name() == "Constant"
            and op.get_output_element_type(0) == openvino.Type.i8
            and len(op.get_output_shape(0)) >= 2
            for op in ops
        )
    from ai_edge_litert.interpreter import Interpreter

    tensors = Interpreter(model_path=path).get_tensor_details()
    return sum(t["dtype"] == np.int8 and len(t["shape"]) >= 2 and "pixels" not in t["name"] for t in tensors)


@pytest.mark.slow  # a CvT-13 export and its quantization (a minute and a half on two cores)
def test_openvino_int8_cvt13_compiles(tmp_path):
    # The failure: NNCF's int8 CvT-13 (224, fixed size) did not compile, as OpenVINO's
    # ReshapeTransformation threw on a reshape that split the batch axis out of the rows.
    # Random weights: this checks the graph, not the accuracy.
    model = CvT13(weights=None, input_shape=(None, None, 3))
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 224, 224, 3)).astype(np.float32)
    path = export(model, tmp_path / "cvt13.xml", format="openvino", input_size=224, quantize="int8", calibration=pixels)
    compiled = openvino.Core().compile_model(path, "CPU")
    assert compiled(pixels)["probabilities"].shape == (2, 1000)


@pytest.mark.slow  # an OpenVINO export
def test_openvino_rows_keep_the_batch_axis(trained_digits, digits_model, tmp_path):
    path = export(digits_model, tmp_path / "tiny.xml", format="openvino", input_size=DIGIT_SIZE)
    model = openvino.Core().read_model(path)
    # Every Dense layer's MatMul but the head's (one class token per image) reads [batch,
    # tokens, channels]: none is left to rewrite.
    matmuls = [op for op in model.get_ordered_ops() if op.get_type_name() == "MatMul"]
    dense = [op for op in matmuls if op.input(1).get_source_output().get_node().get_type_name() == "Constant"]
    ranks = {op.get_friendly_name(): op.input(0).get_partial_shape().rank.get_length() for op in dense}
    assert len(ranks) == 6 * sum(TINY_CONFIG["depths"]) + 1
    assert {name for name, rank in ranks.items() if rank != 3} == {"cvt_1/predictions_1/MatMul"}, ranks
    assert batch_first_projections(model) == 0
    _, _, (images, _) = trained_digits
    pixels = images[:16].astype(np.float32)
    compiled = openvino.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    np.testing.assert_allclose(compiled(pixels)["probabilities"], digits_model.predict(pixels, verbose=0), atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"quantize": "int4", "calibration": np.zeros((1, 32, 32, 3))}, ValueError, r"`quantize` must be None or one of \['int8'\]"),
        ({"quantize": "int8"}, ValueError, "quantize='int8' needs `calibration`"),
        ({"calibration": np.zeros((1, 32, 32, 3))}, ValueError, "`quantize` must be None or one of"),
        ({"quantize": "int8", "calibration": np.zeros((0, 32, 32, 3))}, ValueError, r"shape \(n >= 1"),
        ({"quantize": "int8", "calibration": np.zeros((32, 32, 3))}, ValueError, r"shape \(n >= 1"),
        ({"quantize": "int8", "calibration": np.zeros((1, 48, 48, 3))}, ValueError, "must be 32 x 32"),
        ({"quantize": "int8", "calibration": np.full((1, 32, 32, 3), np.nan)}, ValueError, "finite and in"),
        ({"quantize": "int8", "calibration": np.full((1, 32, 32, 3), 300.0)}, ValueError, "finite and in"),
        ({"quantize": "int8", "calibration": np.array([[["a"]]])}, TypeError, "must hold numbers"),
        (
            {"quantize": "int8", "calibration": np.broadcast_to(np.float32(0), (calibration.MAX_CALIBRATION_SIZE + 1, 32, 32, 3))},
            ValueError,
            "more than",
        ),
    ],
)
def test_export_int8_refusals(tiny_model, tmp_path, kwargs, error, message):
    model = tiny_model
    with pytest.raises(error, match=message):
        export(model, tmp_path / "m.onnx", format="onnx", input_size=DIGIT_SIZE, **kwargs)
    with pytest.raises(ValueError, match=r"quantize='int8' is for the formats \['onnx', 'openvino', 'tflite'\]"):
        export(model, tmp_path / "1", format="saved_model", quantize="int8", calibration=np.zeros((1, 32, 32, 3)))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--output", "models/1", "--quantize", "int8", "--calibration", "."], "--quantize applies to --format onnx or"),
        (["--format", "onnx", "--output", "m.onnx", "--calibration", "."], "--calibration applies with --quantize only"),
        (["--format", "onnx", "--output", "m.onnx", "--calibration-size", "3"], "--calibration-size applies with --quantize"),
        (["--format", "onnx", "--output", "m.onnx", "--quantize", "int8"], "--quantize needs --calibration"),
        (["--format", "onnx", "--output", "m.onnx", "--quantize", "int4"], "invalid choice: 'int4'"),
        (
            ["--format", "tflite", "--output", "m.tflite", "--quantize", "int8", "--calibration", ".",
             "--quantization", "float16"],
            "--quantize int8 replaces --quantization",
        ),
        (["--format", "onnx", "--output", "m.onnx", "--quantize", "int8", "--calibration", "missing"],
         "calibration folder not found"),
        (["--format", "onnx", "--output", "m.onnx", "--quantize", "int8", "--calibration", "empty"], "has no images"),
        (["--format", "onnx", "--output", "m.onnx", "--quantize", "int8", "--calibration", "bad"], "bad.jpg' does not"),
        (["--format", "onnx", "--output", "m.onnx", "--quantize", "int8", "--calibration", "huge"], "is 100000 x 100000"),
        (["--format", "onnx", "--output", "m.onnx", "--quantize", "int8", "--calibration", "bad",
          "--calibration-size", "0"], "expected a positive integer, got '0'"),
        (["--format", "onnx", "--output", "m.onnx", "--quantize", "int8", "--calibration", "bad",
          "--calibration-size", "ten"], "expected a positive integer, got 'ten'"),
        (["--format", "onnx", "--output", "m.onnx", "--quantize", "int8", "--calibration", "bad",
          "--calibration-size", "1.5"], "expected a positive integer, got '1.5'"),
        (["--format", "onnx", "--output", "m.onnx", "--quantize", "int8", "--calibration", "bad",
          "--calibration-size", "10" * 20], f"--calibration-size must be at most {calibration.MAX_CALIBRATION_SIZE}"),
        (["--format", "onnx", "--output", "m.onnx", "--quantize", "int8", "--calibration", "photos"],
         "and there is also a folder 'photos' here: pass './photos' for the folder"),
        (["--format", "onnx", "--output", "m.onnx", "--quantize", "int8", "--calibration", "tfds:"],
         "the calibration source 'tfds:' must be 'tfds:NAME' or 'tfds:NAME@SPLIT'"),
        (["--format", "onnx", "--output", "m.onnx", "--quantize", "int8", "--calibration", "tfds:no_such_dataset_xyz"],
         "calibration source 'tfds:no_such_dataset_xyz': Dataset no_such_dataset_xyz not found."),
    ],
)
def test_cli_int8_refusals_are_one_line(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos").mkdir()
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "bad.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    (tmp_path / "huge").mkdir()
    write_png(tmp_path / "huge" / "huge.png", 100_000, 100_000)
    before = sorted(tmp_path.rglob("*"))
    # A weights name it would have to download: refusals come before any model is built.
    with pytest.raises(SystemExit) as exit_info:
        export_cli.main(["--model", "cvt13", "--weights", "imagenet"] + argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in error and error.startswith("python -m keras_cvt.export: error:"), error
    assert sorted(tmp_path.rglob("*")) == before


def test_cli_tfds_calibration_without_tensorflow_datasets_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # what an absent package does
    argv = ["--format", "onnx", "--output", str(tmp_path / "m.onnx"), "--quantize", "int8", "--calibration", "tfds:x"]
    with pytest.raises(SystemExit) as exit_info:
        export_cli.main(["--model", "cvt13", "--weights", "imagenet"] + argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("python -m keras_cvt.export: error: calibrating on a TensorFlow Datasets dataset")
    assert error.endswith("needs the tensorflow-datasets package: pip install keras-cvt[int8] (or calibrate on a folder of images)")


@pytest.mark.slow  # an int8 LiteRT export
def test_cli_int8_calibrates_on_the_shipped_photos(tiny_variant, tiny_reference, tmp_path, capsys):
    weights, _, _ = tiny_reference
    output = tmp_path / "tiny_int8.tflite"
    argv = ["--model", "tiny", "--weights", str(weights), "--format", "tflite", "--output", str(output), "--size",
            str(DIGIT_SIZE), "--quantize", "int8", "--calibration", "photos"]
    assert export_cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "int8: calibrated on 3 images of photos" in out
    assert f"evaluation_transform({DIGIT_SIZE}, crop_ratio=0.875)" in out
    assert _int8_matrices("tflite", str(output)) >= 6 * sum(TINY_CONFIG["depths"]) + 1


def test_keras_quantize_covers_every_dense_layer_and_reloads(tmp_path):
    """Keras' own `model.quantize("int8")` runs on our models (it refuses an unbuilt sub-layer),
    quantizes every Dense layer, and the `.keras` file loads back int8 with the same outputs
    (and saves again); its accuracy on trained weights is in docs/int8.md."""
    import keras

    model = CvT(depths=(1, 2, 2), embed_dims=(16, 32, 48), num_heads=(1, 2, 3), classes=10, input_shape=(32, 32, 3))
    dense = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.Dense)]
    model.quantize("int8")
    assert len(dense) == 31
    assert [layer.name for layer in dense if layer.quantization_mode != "int8"] == []
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    # Called, not `predict`: no function to trace (seconds on two cores).
    probabilities = keras.ops.convert_to_numpy(model(pixels))
    assert probabilities.shape == (2, 10)
    model.save(tmp_path / "int8.keras")
    loaded = keras.saving.load_model(tmp_path / "int8.keras")
    reloaded_dense = {layer.path: layer for layer in loaded._flatten_layers() if isinstance(layer, keras.layers.Dense)}
    assert sorted(reloaded_dense) == sorted(layer.path for layer in dense)
    assert {layer.quantization_mode for layer in reloaded_dense.values()} == {"int8"}
    assert {layer._kernel.dtype for layer in reloaded_dense.values()} == {"int8"}
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(pixels)), probabilities)
    # The loaded model saves again (Keras' Dense layers cannot save with a policy map).
    loaded.save(tmp_path / "again.keras")
    again = keras.saving.load_model(tmp_path / "again.keras")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(again(pixels)), probabilities)


def test_keras_quantize_of_the_keras_hub_backbone_reloads(tmp_path):
    """keras-hub saves a quantized backbone's policies by layer path; `CvTBackbone` quantizes
    those layers again as it is rebuilt, so the int8 weights load and the outputs are equal."""
    import keras

    from keras_cvt.keras_hub import CvTBackbone

    backbone = CvTBackbone(depths=(1, 2, 2), embed_dims=(16, 32, 48), num_heads=(1, 2, 3), image_shape=(32, 32, 3))
    backbone.quantize("int8")
    images = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    features = keras.ops.convert_to_numpy(backbone(images))
    backbone.save(tmp_path / "backbone.keras")
    loaded = keras.saving.load_model(tmp_path / "backbone.keras")
    assert type(loaded) is CvTBackbone
    dense = [layer for layer in loaded._flatten_layers() if isinstance(layer, keras.layers.Dense)]
    assert len(dense) == 30 and {layer.quantization_mode for layer in dense} == {"int8"}
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(images)), features)
