"""Serving exports: the TF Serving SavedModel (images in, top-k out), its CLI, and TFLite."""

import io
import json
import os
import re
import stat
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert import interpreter as litert
from PIL import Image

from keras_cvt import CvT, atomic, decode_predictions, export_for_serving, export_tflite, serving
from keras_cvt.export import cli as export_cli
from keras_cvt.export import tflite as tflite_export
from keras_cvt.preprocessing import imagenet_classes
from keras_cvt.images import load_image
from keras_cvt.transforms import evaluation_transform
from tests.conftest import TINY_CONFIG

SIZE = 64  # what the tiny model is exported for: short side to int(64 / 0.875) = 73, centre 64
CROP_RATIO = 0.875
TOP_K = 5
SCORE_TOLERANCE = 1e-5
SUBPROCESS_TIMEOUT = 300
# The image files the tests serve: (name, format, height, width), of different sizes and
# aspect ratios so that one batch mixes them.
IMAGE_FILES = (
    ("a.jpg", "JPEG", 50, 70),
    ("b.png", "PNG", 90, 40),
    ("c.gif", "GIF", 30, 30),
    ("d.bmp", "BMP", 64, 100),
)


def _photo_like(height, width, seed):
    """Smooth random image: bicubic detail at several scales, like a photo rather than noise."""
    coarse = np.random.RandomState(seed).randint(0, 256, (max(height // 8, 2), max(width // 8, 2), 3))
    return np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((width, height), Image.BICUBIC))


def _encode(image, fmt):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _top_k(probabilities, k):
    classes = np.argsort(-probabilities, axis=-1, kind="stable")[:, :k]
    return classes, np.take_along_axis(probabilities, classes, axis=-1)


def _keras_top_k(model, paths, size=SIZE, crop_ratio=CROP_RATIO, k=TOP_K):
    """What the served model should answer: the same transform, then the Keras model."""
    transform = evaluation_transform(size, crop_ratio)
    batch = np.stack([transform(load_image(str(path))).numpy() for path in paths])
    return _top_k(model.predict(batch, verbose=0), k)


@pytest.fixture(scope="module")
def tiny_model(tiny_reference):
    path, _, _ = tiny_reference
    return CvT(**TINY_CONFIG, weights=path, input_shape=(None, None, 3))


@pytest.fixture(scope="module")
def exported(tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny" / "1"
    export_for_serving(tiny_model, path, image_size=SIZE, crop_ratio=CROP_RATIO, top_k=TOP_K)
    return path


@pytest.fixture(scope="module")
def served(exported):
    return tf.saved_model.load(str(exported))


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("images")
    paths = []
    for seed, (name, fmt, height, width) in enumerate(IMAGE_FILES):
        (directory / name).write_bytes(_encode(_photo_like(height, width, seed), fmt))
        paths.append(directory / name)
    return paths


def _signature_blocks(show_output):
    blocks = re.split(r"^signature_def\['", show_output, flags=re.M)[1:]
    return {block.split("'", 1)[0]: block for block in blocks}


def _tensor_info(block, kind, key, dtype, shape):
    return re.search(
        rf"{kind}\['{key}'\] tensor_info:\s+dtype: {dtype}\s+shape: {re.escape(shape)}", block
    )


@pytest.mark.slow
def test_saved_model_cli_lists_the_signatures(exported):
    result = subprocess.run(
        ["saved_model_cli", "show", "--all", "--dir", str(exported)],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    blocks = _signature_blocks(result.stdout)
    assert {"serving_default", "predict_pixels", "predict_pixels_uint8"} <= set(blocks)
    images = blocks["serving_default"]
    assert _tensor_info(images, "inputs", "images", "DT_STRING", "(-1)")
    assert _tensor_info(images, "outputs", "classes", "DT_INT32", f"(-1, {TOP_K})")
    assert _tensor_info(images, "outputs", "labels", "DT_STRING", f"(-1, {TOP_K})")
    assert _tensor_info(images, "outputs", "scores", "DT_FLOAT", f"(-1, {TOP_K})")
    for name, dtype in (("predict_pixels", "DT_FLOAT"), ("predict_pixels_uint8", "DT_UINT8")):
        assert _tensor_info(blocks[name], "inputs", "pixels", dtype, "(-1, -1, -1, 3)")
        assert _tensor_info(blocks[name], "outputs", "probabilities", "DT_FLOAT", "(-1, 10)")


@pytest.mark.slow
def test_saved_model_cli_run_on_a_jpeg(exported, image_files, tiny_model, tmp_path):
    jpeg = image_files[0]
    inputs = tmp_path / "images.npy"
    # An object array keeps the bytes as they are (a fixed-width bytes array would strip
    # trailing NULs); saved_model_cli loads it with allow_pickle.
    np.save(inputs, np.array([jpeg.read_bytes()], dtype=object), allow_pickle=True)
    result = subprocess.run(
        [
            "saved_model_cli", "run", "--dir", str(exported), "--tag_set", "serve",
            "--signature_def", "serving_default", "--inputs", f"images={inputs}",
            "--outdir", str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    classes = np.load(tmp_path / "out" / "classes.npy")
    scores = np.load(tmp_path / "out" / "scores.npy")
    labels = np.load(tmp_path / "out" / "labels.npy", allow_pickle=True)
    assert classes.shape == scores.shape == labels.shape == (1, TOP_K)
    assert classes.dtype == np.int32 and scores.dtype == np.float32
    expected_classes, expected_scores = _keras_top_k(tiny_model, [jpeg])
    np.testing.assert_array_equal(classes, expected_classes)
    np.testing.assert_allclose(scores, expected_scores, rtol=0, atol=SCORE_TOLERANCE)
    # Without names for a 10-class head, the labels are the class indices.
    assert [label.decode() for label in labels[0]] == [str(c) for c in expected_classes[0]]


# Runs in a fresh interpreter in which Keras and keras_cvt cannot be imported at all: plain
# `import tensorflow` imports Keras 3 whenever it is installed (tensorflow/__init__.py loads
# keras.src.optimizers), so "not imported" would otherwise be untestable. A server has neither.
FRESH_PROCESS = textwrap.dedent(
    """
    import importlib.abc, importlib.machinery, json, sys

    BLOCKED = ("keras", "keras_cvt", "tf_keras")

    class Blocked(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                return importlib.machinery.ModuleSpec(name, self)
            return None

        def create_module(self, spec):
            return None

        def exec_module(self, module):
            raise ImportError(f"{module.__name__} is not available to this process")

    sys.meta_path.insert(0, Blocked())

    import numpy as np
    import tensorflow as tf

    request = json.loads(sys.argv[1])
    model = tf.saved_model.load(request["model"])
    out = {}
    for name, paths in request["batches"].items():
        images = tf.constant([open(path, "rb").read() for path in paths])
        for key, value in model.signatures["serving_default"](images=images).items():
            out[f"{name}/{key}"] = value.numpy()
    pixels = np.load(request["pixels"])
    out["pixels/float32"] = model.signatures["predict_pixels"](pixels=tf.constant(pixels))["probabilities"].numpy()
    out["pixels/uint8"] = model.signatures["predict_pixels_uint8"](
        pixels=tf.constant(pixels.astype(np.uint8))
    )["probabilities"].numpy()
    np.savez(request["out"], **out)
    print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)))
    """
)


def run_script(source, request, directory):
    """Runs `source` in a fresh interpreter (in `directory`) with `request`, as JSON, its argument."""
    script = directory / "script.py"
    script.write_text(source)
    return subprocess.run(
        [sys.executable, str(script), json.dumps(request)],
        capture_output=True,
        text=True,
        cwd=directory,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        timeout=SUBPROCESS_TIMEOUT,
    )


@pytest.mark.slow
def test_fresh_process_without_keras_gets_the_keras_scores(exported, image_files, tiny_model, tmp_path):
    batches = {"jpeg": [image_files[0]], "png": [image_files[1]], "mixed": image_files}
    # Pixels of a size no image transform produces: predict_pixels takes any height and width.
    pixels = np.stack([_photo_like(48, 72, 10 + i) for i in range(2)]).astype(np.float32)
    np.save(tmp_path / "pixels.npy", pixels)
    request = {
        "model": str(exported),
        "batches": {name: [str(p) for p in paths] for name, paths in batches.items()},
        "pixels": str(tmp_path / "pixels.npy"),
        "out": str(tmp_path / "out.npz"),
    }
    result = run_script(FRESH_PROCESS, request, tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
    out = np.load(tmp_path / "out.npz", allow_pickle=True)
    for name, paths in batches.items():
        expected_classes, expected_scores = _keras_top_k(tiny_model, paths)
        assert out[f"{name}/scores"].shape == (len(paths), TOP_K)
        np.testing.assert_array_equal(out[f"{name}/classes"], expected_classes)
        np.testing.assert_allclose(out[f"{name}/scores"], expected_scores, rtol=0, atol=SCORE_TOLERANCE)
    expected = tiny_model.predict(pixels, verbose=0)
    np.testing.assert_allclose(out["pixels/float32"], expected, rtol=0, atol=SCORE_TOLERANCE)
    np.testing.assert_allclose(out["pixels/uint8"], expected, rtol=0, atol=SCORE_TOLERANCE)


def test_predict_request_protos(served, image_files, tiny_model):
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "tiny"
    request.model_spec.signature_name = "serving_default"
    request.inputs["images"].CopyFrom(tf.make_tensor_proto([path.read_bytes() for path in image_files[:2]]))
    # What a server receives: the request off the wire.
    received = predict_pb2.PredictRequest.FromString(request.SerializeToString())
    signature = served.signatures[received.model_spec.signature_name]
    inputs = {key: tf.constant(tf.make_ndarray(proto)) for key, proto in received.inputs.items()}
    outputs = signature(**inputs)

    response = predict_pb2.PredictResponse()
    for key, value in outputs.items():
        response.outputs[key].CopyFrom(tf.make_tensor_proto(value.numpy()))
    response = predict_pb2.PredictResponse.FromString(response.SerializeToString())
    classes = tf.make_ndarray(response.outputs["classes"])
    scores = tf.make_ndarray(response.outputs["scores"])
    labels = tf.make_ndarray(response.outputs["labels"])
    expected_classes, expected_scores = _keras_top_k(tiny_model, image_files[:2])
    np.testing.assert_array_equal(classes, expected_classes)
    np.testing.assert_allclose(scores, expected_scores, rtol=0, atol=SCORE_TOLERANCE)
    assert labels.shape == (2, TOP_K) and labels[1, 0].decode() == str(expected_classes[1, 0])


def _zero_width_bmp():
    bmp = bytearray(_encode(_photo_like(8, 8, 0), "BMP"))
    bmp[18:22] = (0).to_bytes(4, "little")  # BITMAPINFOHEADER width
    return bytes(bmp)


@pytest.mark.parametrize(
    "bad,position",
    [
        (b"this is not an image", 0),
        (b"", 1),
        (_zero_width_bmp(), 2),
        (_encode(_photo_like(40, 40, 0), "JPEG")[:60], 1),  # truncated
        (_encode(_photo_like(40, 40, 0), "PNG")[:40], 2),  # truncated
    ],
    ids=["not-an-image", "empty", "zero-sized", "truncated-jpeg", "truncated-png"],
)
def test_bad_image_fails_the_request_naming_it(served, image_files, bad, position):
    images = [path.read_bytes() for path in image_files[:2]]
    images.insert(position, bad)
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"`images`\[{position}\]"):
        served.signatures["serving_default"](images=tf.constant(images))
    # The model is still usable: the error was a clean one.
    good = served.signatures["serving_default"](images=tf.constant(images[:position] + images[position + 1 :]))
    assert good["scores"].shape == (2, TOP_K)


def test_empty_batch_and_too_small_pixels(served):
    empty = served.signatures["serving_default"](images=tf.constant([], tf.string))
    assert empty["classes"].shape == empty["labels"].shape == empty["scores"].shape == (0, TOP_K)
    assert served.signatures["predict_pixels"](pixels=tf.zeros([0, 8, 8, 3]))["probabilities"].shape == (0, 10)
    # The first convolution (kernel 7, stride 4, padding 2) needs 3 pixels.
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"`pixels` height and width must be at least 3"):
        served.signatures["predict_pixels"](pixels=tf.zeros([1, 2, 30, 3]))


@pytest.mark.slow
def test_model_without_preprocessing_or_softmax_serves_the_same(
    tiny_reference, served, image_files, tmp_path
):
    """include_preprocessing=False and logits: the signature normalises and applies softmax."""
    path, _, _ = tiny_reference
    model = CvT(
        **TINY_CONFIG,
        weights=path,
        input_shape=(None, None, 3),
        include_preprocessing=False,
        classifier_activation=None,
    )
    names = [f"class {i}" for i in range(10)]
    export_for_serving(
        model, tmp_path / "raw" / "1", image_size=SIZE, crop_ratio=CROP_RATIO, top_k=TOP_K, labels=names
    )
    raw = tf.saved_model.load(str(tmp_path / "raw" / "1"))
    images = tf.constant([path.read_bytes() for path in image_files])
    ours = raw.signatures["serving_default"](images=images)
    reference = served.signatures["serving_default"](images=images)
    np.testing.assert_array_equal(ours["classes"].numpy(), reference["classes"].numpy())
    np.testing.assert_allclose(ours["scores"].numpy(), reference["scores"].numpy(), rtol=0, atol=SCORE_TOLERANCE)
    assert [label.decode() for label in ours["labels"].numpy()[0]] == [
        names[c] for c in reference["classes"].numpy()[0]
    ]
    pixels = tf.constant(np.stack([_photo_like(40, 56, 3)]).astype(np.float32))
    np.testing.assert_allclose(
        raw.signatures["predict_pixels"](pixels=pixels)["probabilities"].numpy(),
        served.signatures["predict_pixels"](pixels=pixels)["probabilities"].numpy(),
        rtol=0,
        atol=SCORE_TOLERANCE,
    )


@pytest.mark.slow
def test_imagenet_labels_for_a_1000_class_head(image_files, tmp_path):
    keras.utils.set_random_seed(0)
    model = CvT(
        depths=(1, 1, 1), embed_dims=(16, 32, 48), num_heads=(1, 2, 3), classes=1000, input_shape=(None, None, 3)
    )
    # The 384 checkpoints' straight resize, where the tiny model covers the crop.
    export_for_serving(model, tmp_path / "1", image_size=32, crop_ratio=None, top_k=3)
    served = tf.saved_model.load(str(tmp_path / "1"))
    result = served.signatures["serving_default"](images=tf.constant([path.read_bytes() for path in image_files]))
    transform = evaluation_transform(32, None)
    batch = np.stack([transform(load_image(str(path))).numpy() for path in image_files])
    decoded = decode_predictions(model.predict(batch, verbose=0), top=3)
    labels = [[label.decode() for label in row] for row in result["labels"].numpy()]
    assert labels == [[name for _, name, _ in row] for row in decoded]
    wordnet_ids = [wnid for wnid, _ in imagenet_classes()]
    assert [[wordnet_ids[c] for c in row] for row in result["classes"].numpy()] == [
        [wnid for wnid, _, _ in row] for row in decoded
    ]


def test_argument_errors_come_before_any_work(tiny_model, exported, tmp_path):
    before = sorted(os.listdir(exported))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_for_serving(tiny_model, exported, image_size=SIZE)
    assert sorted(os.listdir(exported)) == before
    with pytest.raises(ValueError, match="1000 classes"):
        export_for_serving(tiny_model, tmp_path / "a", labels="imagenet")
    with pytest.raises(ValueError, match="one string per class"):
        export_for_serving(tiny_model, tmp_path / "a", labels=["x"] * 9)
    with pytest.raises(ValueError, match="top_k"):
        export_for_serving(tiny_model, tmp_path / "a", top_k=11)
    with pytest.raises(ValueError, match="include_top=True"):
        export_for_serving(CvT(**TINY_CONFIG, include_top=False, pooling="avg"), tmp_path / "a")
    with pytest.raises(ValueError, match="image_size"):
        export_for_serving(CvT(**TINY_CONFIG, input_shape=(64, 64, 3)), tmp_path / "a", image_size=96)
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_directory_is_published_whole(tiny_model, tmp_path, monkeypatch):
    target = tmp_path / "models" / "m" / "1"
    save = tf.saved_model.save

    def failing(obj, export_dir, *args, **kwargs):
        save(obj, export_dir, *args, **kwargs)
        raise OSError("No space left on device")

    # What the export archive writes with, so the SavedModel is all there when the write fails.
    monkeypatch.setattr(tf.saved_model, "save", failing)
    with pytest.raises(OSError, match="No space left"):
        export_for_serving(tiny_model, target, image_size=SIZE)
    # Neither a half-written version nor the staging directory is left for a server to find.
    assert os.listdir(target.parent) == []

    # The publication itself (keras_cvt.atomic), as export_for_serving uses it.
    def publish(marker, overwrite=False):
        with atomic.publish_directory(target, overwrite) as staging:
            open(os.path.join(staging, marker), "w").close()

    publish("old")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        publish("new")
    assert os.listdir(target) == ["old"]
    publish("new", overwrite=True)
    assert os.listdir(target) == ["new"]
    assert os.listdir(target.parent) == ["1"]
    # Readable by a server running as another user, as far as the umask allows.
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o755 & ~umask


@pytest.mark.slow
def test_cli_exports_a_weights_file(tiny_reference, tiny_model, image_files, tmp_path, tiny_variant, capsys):
    path, _, _ = tiny_reference
    # --model takes the variants of keras_cvt.architectures; a tiny one stands in for CvT-13.
    output = tmp_path / "models" / "tiny" / "7"
    argv = [
        "--model", "tiny", "--weights", str(path), "--output", str(output),
        "--size", "48", "--crop-ratio", "none", "--top-k", "3",
    ]
    assert export_cli.main(argv) == 0
    assert str(output) in capsys.readouterr().out
    served = tf.saved_model.load(str(output))
    result = served.signatures["serving_default"](images=tf.constant([p.read_bytes() for p in image_files]))
    expected_classes, expected_scores = _keras_top_k(tiny_model, image_files, size=48, crop_ratio=None, k=3)
    np.testing.assert_array_equal(result["classes"].numpy(), expected_classes)
    np.testing.assert_allclose(result["scores"].numpy(), expected_scores, rtol=0, atol=SCORE_TOLERANCE)
    with pytest.raises(SystemExit) as exit_info:
        export_cli.main(argv)
    assert exit_info.value.code == 2 and "overwrite" in capsys.readouterr().err


def test_cli_transform_follows_the_pretrained_weights(tmp_path, capsys):
    assert export_cli.evaluation_settings("cvt13", "imagenet") == (224, 0.875)
    assert export_cli.evaluation_settings("cvt21", "imagenet-384") == (384, None)
    assert export_cli.evaluation_settings("cvtw24", "imagenet") == (384, None)  # its only checkpoint
    assert export_cli.evaluation_settings("cvt13", "imagenet-384", size=448) == (448, None)
    assert export_cli.evaluation_settings("cvt13", "imagenet", crop_ratio=None) == (224, None)
    assert export_cli.evaluation_settings("cvt13", "my.weights.h5") == (224, 0.875)
    assert export_cli.evaluation_settings("cvt13", "my.weights.h5", 384, None) == (384, None)
    with pytest.raises(SystemExit) as exit_info:
        export_cli.main(["--model", "cvt13", "--weights", "imagenet-1k", "--output", str(tmp_path / "1")])
    assert exit_info.value.code == 2
    assert "imagenet-384" in capsys.readouterr().err  # the names it has
    assert not (tmp_path / "1").exists()


# Inputs in [0, 255] at the TFLite input size, as the evaluation transform would make them.
TFLITE_INPUTS = 16
# Top-1 agreement with Keras measured on these inputs: 16/16 for both quantizations, with
# largest probability changes of 3e-4 (float16) and 7e-3 (dynamic range). One input's top two
# classes are 8e-4 apart, so it may flip on other kernels; the next closest are 1.6e-2 apart,
# more than 2 x 7e-3, so a second disagreement means a broken export.
TFLITE_AGREEMENT = {"float16": 15 / 16, "dynamic_range": 15 / 16}


def _tflite_predict(path, inputs):
    interpreter = litert.Interpreter(
        model_path=str(path),
        # No Flex delegate (nor any default one): a select TF op would fail to resolve here.
        experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    runner = interpreter.get_signature_runner("serving_default")
    return ops, np.concatenate([runner(pixels=x[None])["probabilities"] for x in inputs])


def _check_tflite_classifier(path, inputs, probabilities):
    classifier = serving.TFLiteClassifier(path)
    assert classifier.input_shape == (SIZE, SIZE, 3) and classifier.classes == 10
    # XNNPack (the default delegate) against the builtin kernels: float32 either way.
    np.testing.assert_allclose(classifier(inputs), probabilities, rtol=0, atol=1e-5)
    assert classifier(inputs[:0]).shape == (0, 10)
    wrong = inputs[:1, :32, :32]
    with pytest.raises(
        ValueError,
        match=r"`pixels` must have shape \(batch, 64, 64, 3\): this TFLite model \(.*\) takes 64 x 64 images "
        r"and the runtime cannot resize it; got shape \(1, 32, 32, 3\)",
    ):
        classifier(wrong)
    with pytest.raises(ValueError, match=r"got shape \(64, 64, 3\)"):
        classifier(inputs[0])
    with pytest.raises(TypeError, match="dtype"):
        classifier(np.full((1, SIZE, SIZE, 3), "x"))
    # The runtime alone fails without naming the input or the size it takes.
    runner = litert.Interpreter(model_path=str(path)).get_signature_runner()
    with pytest.raises(RuntimeError, match="failed to (reshape|prepare|invoke)"):
        runner(pixels=wrong)
    # The check came before the runtime: the classifier is still usable.
    np.testing.assert_allclose(classifier(inputs[:2]), probabilities[:2], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_tflite_builtin_ops_only_and_close_to_keras(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="quantization"):
        export_tflite(tiny_model, tmp_path / "unused.tflite", quantization="int8")
    inputs = np.stack([_photo_like(SIZE, SIZE, 100 + i) for i in range(TFLITE_INPUTS)]).astype(np.float32)
    expected = tiny_model.predict(inputs, verbose=0)
    sizes = {}
    for quantization in (None, "float16", "dynamic_range"):
        path = tmp_path / f"tiny-{quantization}.tflite"
        if quantization == "dynamic_range":
            # export_tflite's own converter, to see its settings: builtins only, no select TF ops.
            with tflite_export._tflite_converter(tiny_model, quantization, SIZE) as converter:
                assert set(converter.target_spec.supported_ops) == {tf.lite.OpsSet.TFLITE_BUILTINS}
                assert converter.optimizations == [tf.lite.Optimize.DEFAULT]
                atomic.write_bytes(path, converter.convert())
        else:
            assert export_tflite(tiny_model, path, quantization=quantization, input_size=SIZE) == str(path)
        ops, probabilities = _tflite_predict(path, inputs)
        assert "DEPTHWISE_CONV_2D" in ops
        assert not [op for op in ops if op.startswith("Flex") or op == "CUSTOM"]
        sizes[quantization] = path.stat().st_size
        if quantization is None:
            np.testing.assert_allclose(probabilities, expected, rtol=0, atol=1e-4)
            _check_tflite_classifier(path, inputs, probabilities)
            continue
        agreement = np.mean(probabilities.argmax(-1) == expected.argmax(-1))
        print(
            f"TFLite {quantization}: top-1 agreement with Keras {agreement:.3f} on {TFLITE_INPUTS} inputs, "
            f"largest probability difference {np.abs(probabilities - expected).max():.2e}"
        )
        assert agreement >= TFLITE_AGREEMENT[quantization]
    assert sizes["float16"] < sizes[None] and sizes["dynamic_range"] < sizes["float16"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
