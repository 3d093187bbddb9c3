"""The pixel formats of `keras_cvt.export` (ONNX, OpenVINO, LiteRT), each loaded in its own runtime and
held to the Keras model; the registry and `export` dispatch; the command line's --format."""

import os

import keras
import numpy as np
import onnx
import onnxruntime
import openvino
import pytest
from ai_edge_litert import interpreter as litert

from keras_cvt import CvT, atomic, attention
from keras_cvt.export import FORMATS, TFLiteClassifier, export
from keras_cvt.export import cli as export_cli
from keras_cvt.export import openvino as openvino_export
from keras_cvt.export.classifier import min_input_size
from tests.conftest import TINY_CONFIG

# Two input sizes for the files with a free height and width; the second is not square.
SIZES = ((64, 64), (80, 96))
# float32 on every runtime: the same operations as Keras, in other orders.
TOLERANCE = 1e-4
# OpenVINO's bfloat16 keeps 8 bits of mantissa (relative rounding 2**-9 = 2e-3 per operation);
# measured on these inputs: probabilities within 3e-4 of float32's. 1e-2 leaves room for other
# CPUs' kernels and still fails a broken graph, whose probabilities (ten classes, about 0.1 each)
# move by more.
BFLOAT16_TOLERANCE = 1e-2
# One of the 2 + 3 images' top two classes may be closer than bfloat16's error.
BFLOAT16_AGREEMENT = 0.8


def _random_pixels(batch, height, width, seed):
    return np.random.default_rng(seed).uniform(0, 255, (batch, height, width, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_model(tiny_reference):
    path, _, _ = tiny_reference
    # Logits out: the exports add the softmax (the SavedModel tests cover a softmax head).
    return CvT(**TINY_CONFIG, weights=path, input_shape=(None, None, 3), classifier_activation=None)


@pytest.fixture(scope="module")
def expected(tiny_model):
    """(pixels, Keras probabilities) at each of `SIZES`."""
    cases = []
    for seed, (height, width) in enumerate(SIZES):
        pixels = _random_pixels(2 + seed, height, width, seed)
        logits = tiny_model.predict(pixels, verbose=0).astype(np.float64)
        probabilities = np.exp(logits - logits.max(-1, keepdims=True))
        cases.append((pixels, probabilities / probabilities.sum(-1, keepdims=True)))
    return cases


@pytest.fixture(scope="module")
def files(tiny_model, tmp_path_factory):
    directory = tmp_path_factory.mktemp("exports")
    # input_size=None: any height and width (the default of onnx and openvino, not of tflite).
    return {
        name: export(tiny_model, directory / f"tiny{FORMATS[name].suffix}", format=name, input_size=None)
        for name in ("onnx", "openvino", "tflite")
    }


@pytest.mark.slow  # the exports: tens of seconds on two cores
def test_onnx_in_onnx_runtime(files, expected):
    model = onnx.load(files["onnx"])
    onnx.checker.check_model(model)
    # One input, as the issue asked: Keras' own ONNX export had the normalisation's constants as two more.
    assert [i.name for i in model.graph.input] == ["pixels"]
    assert [o.name for o in model.graph.output] == ["probabilities"]
    # Each block's two LayerNorms and the head's are one LayerNormalization node each (the
    # embeddings' norms, on maps tf2onnx keeps channels-first, are left as they are).
    layer_norms = [node for node in model.graph.node if node.op_type == "LayerNormalization"]
    assert len(layer_norms) == 2 * sum(TINY_CONFIG["depths"]) + 1
    assert not any(node.op_type == "Reciprocal" and "norm1" in node.name for node in model.graph.node)
    session = onnxruntime.InferenceSession(files["onnx"], providers=["CPUExecutionProvider"])
    (pixels_input,) = session.get_inputs()
    assert pixels_input.type == "tensor(float)"
    assert len(pixels_input.shape) == 4 and pixels_input.shape[3] == 3
    assert not any(isinstance(d, int) for d in pixels_input.shape[:3])  # batch, height, width free
    for pixels, probabilities in expected:
        (result,) = session.run(["probabilities"], {"pixels": pixels})
        assert result.shape == probabilities.shape and result.dtype == np.float32
        np.testing.assert_allclose(result, probabilities, rtol=0, atol=TOLERANCE)


def _openvino(path, precision):
    return openvino.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": precision})


@pytest.mark.slow  # the exports: tens of seconds on two cores
def test_openvino_float32(files, expected):
    assert os.path.isfile(files["openvino"][: -len(".xml")] + ".bin")
    # Every LayerNorm of the blocks (two each) and the head's became one MVN (`_fuse_layer_norms`).
    model = openvino.Core().read_model(files["openvino"])
    assert sum(op.get_type_name() == "MVN" for op in model.get_ordered_ops()) >= 2 * sum(TINY_CONFIG["depths"]) + 1
    compiled = _openvino(files["openvino"], "f32")
    assert [i.get_any_name() for i in compiled.inputs] == ["pixels"]
    assert [o.get_any_name() for o in compiled.outputs] == ["probabilities"]
    shape = compiled.inputs[0].get_partial_shape()
    assert [d.is_dynamic for d in shape] == [True, True, True, False] and shape[3].get_length() == 3
    for pixels, probabilities in expected:
        result = compiled(pixels)["probabilities"]
        assert result.shape == probabilities.shape
        np.testing.assert_allclose(result, probabilities, rtol=0, atol=TOLERANCE)


@pytest.mark.slow  # the exports: tens of seconds on two cores
def test_openvino_bfloat16(files, expected):
    if "BF16" not in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        pytest.skip("this CPU has no bfloat16 (AVX-512 BF16 or AMX) for OpenVINO")
    compiled = _openvino(files["openvino"], "bf16")
    assert compiled.get_property("INFERENCE_PRECISION_HINT") == openvino.Type.bf16
    agreements = []
    for pixels, probabilities in expected:
        result = compiled(pixels)["probabilities"]
        difference = np.abs(result - probabilities).max()
        print(f"OpenVINO bfloat16 at {pixels.shape[1:3]}: largest probability difference {difference:.2e}")
        assert difference < BFLOAT16_TOLERANCE
        # Not the float32 numbers: the hint reached the CPU plugin.
        assert difference > 1e-6
        agreements.extend(result.argmax(-1) == probabilities.argmax(-1))
    assert np.mean(agreements) >= BFLOAT16_AGREEMENT


@pytest.mark.slow  # the exports: tens of seconds on two cores
def test_tflite_free_batch_and_size(files, expected, tiny_model):
    interpreter = litert.Interpreter(
        model_path=files["tflite"],
        experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert not [op for op in ops if op.startswith("Flex") or op == "CUSTOM"]
    runner = interpreter.get_signature_runner("serving_default")
    assert list(runner.get_input_details()["pixels"]["shape_signature"]) == [-1, -1, -1, 3]
    classifier = TFLiteClassifier(files["tflite"])  # XNNPack, the default delegate
    assert classifier.input_shape == (None, None, 3)
    for pixels, probabilities in expected:
        np.testing.assert_allclose(runner(pixels=pixels)["probabilities"], probabilities, rtol=0, atol=TOLERANCE)
        np.testing.assert_allclose(classifier(pixels), probabilities, rtol=0, atol=TOLERANCE)
    assert classifier(expected[0][0][:0]).shape == (0, TINY_CONFIG["classes"])
    with pytest.raises(ValueError, match=r"\(batch, height, width, 3\) \(RGB\), got shape \(1, 64, 64, 4\)"):
        classifier(np.zeros((1, 64, 64, 4), np.float32))
    # The smallest size the architecture takes, recorded in the file: smaller is refused first
    # (the runtime would fail in a DEPTHWISE_CONV_2D's or XNNPack's reshape).
    assert classifier.min_size == min_input_size(tiny_model) == 3
    assert classifier(np.zeros((2, 3, 5, 3), np.float32)).shape == (2, TINY_CONFIG["classes"])
    for height, width in ((1, 1), (2, 64)):
        with pytest.raises(ValueError) as error:
            classifier(np.zeros((2, height, width, 3), np.float32))
        assert str(error.value) == (
            f"`pixels`[0] is {height} x {width} (height x width; every image of the batch has that shape): this "
            f"TFLite model ({files['tflite']}) takes images of at least 3 x 3, the smallest its patch "
            "embeddings leave a token of"
        )
        with pytest.raises(RuntimeError, match="failed to prepare"):  # what it spares users
            runner(pixels=np.zeros((2, height, width, 3), np.float32))


@pytest.mark.slow  # the exports: tens of seconds on two cores
def test_fixed_size_exports(tiny_model, expected, tmp_path):
    pixels, probabilities = expected[1]  # 80 x 96: not square, so a fixed size cannot take it
    square = pixels[:, :80, :80]
    wanted = tiny_model.predict(square, verbose=0)
    wanted = np.exp(wanted - wanted.max(-1, keepdims=True))
    wanted /= wanted.sum(-1, keepdims=True)
    path = export(tiny_model, tmp_path / "fixed.onnx", format="onnx", input_size=80)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1:] == [80, 80, 3]
    np.testing.assert_allclose(session.run(None, {"pixels": square})[0], wanted, rtol=0, atol=TOLERANCE)
    # Of a fixed size, every reshape has a constant shape: only the class token (repeated per
    # image) and its flattening read the batch at run time. (Reshapes to the batch read from the
    # map made 65 Shape nodes of CvT-13's ONNX graph, and split its LiteRT graph at each one
    # into 79 parts, as XNNPACK cannot run them.)
    assert sum(node.op_type == "Shape" for node in onnx.load(path).graph.node) <= 2
    path = export(tiny_model, tmp_path / "fixed.xml", format="openvino", input_size=80)
    compiled = _openvino(path, "f32")
    assert [d.is_dynamic for d in compiled.inputs[0].get_partial_shape()] == [True, False, False, False]
    np.testing.assert_allclose(compiled(square)["probabilities"], wanted, rtol=0, atol=TOLERANCE)
    path = export(tiny_model, tmp_path / "fixed.tflite", format="tflite", input_size=80)
    runner = litert.Interpreter(model_path=path)
    np.testing.assert_allclose(
        runner.get_signature_runner()(pixels=square)["probabilities"], wanted, rtol=0, atol=TOLERANCE
    )
    names = {tensor["index"]: tensor["name"] for tensor in runner.get_tensor_details()}
    shapes = [names[i] for op in runner._get_ops_details() if op["op_name"] == "SHAPE" for i in op["outputs"]]
    assert len(shapes) == 2 and all("cls_token" in name for name in shapes), shapes


# The first stage's scores are 41 MB per image at 320 pixels, past attention.PLAIN_LIMIT_BYTES:
# blocks there, whole matrices in the later stages.
LARGE = 320


def _relative(a, b):
    return np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max()


def _onnx_op_types(graph):
    """The operation types of an ONNX graph and of the graphs inside its nodes (If, Loop)."""
    types = set()
    for node in graph.node:
        types.add(node.op_type)
        for attribute in node.attribute:
            for subgraph in [attribute.g] if attribute.HasField("g") else attribute.graphs:
                types |= _onnx_op_types(subgraph)
    return types


@pytest.mark.slow  # the runs at 320 pixels (the files are the module's)
def test_large_images(files, tiny_model):
    """Past the limit the ONNX file computes the first stage's scores in blocks (a loop, chosen
    by a conditional from the sizes in a file of any size; a file of a fixed size has the loop
    alone, as test_attention's graphs), the OpenVINO file in its own fused attention, the
    LiteRT file whole; each with the numbers of the whole matrices."""
    queries, keys = (LARGE // 4) ** 2, (LARGE // 8) ** 2
    assert attention.query_block_rows(TINY_CONFIG["num_heads"][0], queries, keys) < queries
    pixels = _random_pixels(2, LARGE, LARGE, 7)
    with attention.whole_scores():
        logits = keras.ops.convert_to_numpy(tiny_model(pixels, training=False)).astype(np.float64)
    wanted = np.exp(logits - logits.max(-1, keepdims=True))
    wanted /= wanted.sum(-1, keepdims=True)

    assert {"If", "Loop"} <= _onnx_op_types(onnx.load(files["onnx"]).graph)
    session = onnxruntime.InferenceSession(files["onnx"], providers=["CPUExecutionProvider"])
    assert _relative(session.run(None, {"pixels": pixels})[0], wanted) <= 1e-5
    ops = [op.get_type_name() for op in openvino.Core().read_model(files["openvino"]).get_ordered_ops()]
    assert ops.count("ScaledDotProductAttention") == sum(TINY_CONFIG["depths"]) and "Loop" not in ops
    assert _relative(_openvino(files["openvino"], "f32")(pixels)["probabilities"], wanted) <= 1e-5
    runner = litert.Interpreter(model_path=files["tflite"]).get_signature_runner()
    assert _relative(runner(pixels=pixels)["probabilities"], wanted) <= 1e-5


def test_export_refuses_before_tracing(tiny_model, tmp_path):
    with pytest.raises(ValueError, match=r"`format` must be one of \['onnx', 'openvino', 'saved_model', 'tflite'\]"):
        export(tiny_model, tmp_path / "m.pt", format="torchscript")
    with pytest.raises(ValueError, match=r"format='onnx' takes the options \['input_size', 'opset'\], got \['top_k'\]"):
        export(tiny_model, tmp_path / "m.onnx", format="onnx", top_k=5)
    with pytest.raises(ValueError, match=r"must end with \.xml"):
        export(tiny_model, tmp_path / "m.onnx", format="openvino")
    with pytest.raises(ValueError, match="`input_size` must be None or an integer of at least"):
        export(tiny_model, tmp_path / "m.onnx", format="onnx", input_size=2)
    with pytest.raises(ValueError, match="`opset` must be an integer of at least 13"):
        export(tiny_model, tmp_path / "m.onnx", format="onnx", opset=9)
    fixed = CvT(**TINY_CONFIG, input_shape=(64, 64, 3))
    with pytest.raises(ValueError, match=r"takes only 64 x 64 images: pass that input_size"):
        export(fixed, tmp_path / "m.tflite", format="tflite", input_size=None)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # the exports: tens of seconds on two cores
def test_failed_conversion_leaves_nothing(tiny_model, tmp_path, monkeypatch):
    """A conversion that fails halfway (after writing part of its output) leaves neither the
    file nor a staging entry, and an existing file keeps its content."""
    target = tmp_path / "m.xml"
    atomic.write_bytes(target, b"old")

    def failing(model, path, compress_to_fp16):
        with open(path, "wb") as f:
            f.write(b"<half")
        raise OSError("No space left on device")

    monkeypatch.setattr(openvino_export.openvino, "save_model", failing)
    with pytest.raises(OSError, match="No space"):
        export(tiny_model, target, format="openvino")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.xml"] and target.read_bytes() == b"old"


@pytest.mark.slow
def test_cli_formats(tiny_variant, tiny_reference, expected, tmp_path, capsys):
    weights, _, _ = tiny_reference
    base = ["--model", "tiny", "--weights", str(weights)]
    output = tmp_path / "tiny.onnx"
    assert export_cli.main(base + ["--format", "onnx", "--output", str(output)]) == 0
    out = capsys.readouterr().out
    assert "[batch, height, width, 3]" in out and "evaluation_transform(224, crop_ratio=0.875)" in out
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    for pixels, probabilities in expected:
        np.testing.assert_allclose(session.run(None, {"pixels": pixels})[0], probabilities, rtol=0, atol=TOLERANCE)
    output = tmp_path / "tiny.tflite"
    argv = base + ["--format", "tflite", "--output", str(output), "--size", "64", "--quantization", "float16"]
    assert export_cli.main(argv) == 0
    assert "[batch, 64, 64, 3]" in capsys.readouterr().out
    classifier = TFLiteClassifier(output)
    assert classifier.input_shape == (64, 64, 3)
    pixels, probabilities = expected[0]
    # float16 weights: measured within 3e-4 of float32 in test_serving.
    np.testing.assert_allclose(classifier(pixels), probabilities, rtol=0, atol=1e-2)
    with pytest.raises(SystemExit) as exit_info:
        export_cli.main(argv)
    assert exit_info.value.code == 2 and "exists; pass --overwrite" in capsys.readouterr().err
    assert export_cli.main(argv + ["--overwrite"]) == 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--format", "onnx", "--output", "m.onnx", "--top-k", "3"],
            "--top-k applies to --format saved_model, not onnx",
        ),
        (
            ["--format", "openvino", "--output", "m.xml", "--crop-ratio", "none"],
            "--crop-ratio applies to --format saved_model",
        ),
        (
            ["--output", "models/1", "--quantization", "float16"],
            "--quantization applies to --format tflite, not saved_model",
        ),
        (["--format", "tflite", "--output", "m.onnx"], "--output of --format tflite must end with .tflite"),
        (["--format", "openvino", "--output", "m.bin"], "must end with .xml"),
        (["--format", "keras", "--output", "m.keras"], "invalid choice: 'keras'"),
        (["--format", "onnx", "--output", "m.onnx", "--size", "0"], "expected a positive integer"),
    ],
)
def test_cli_refusals_are_one_line(tiny_variant, tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    # A weights name it would have to download: refusals come before any model is built.
    with pytest.raises(SystemExit) as exit_info:
        export_cli.main(["--model", "cvt13", "--weights", "imagenet"] + argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in error and error.startswith("python -m keras_cvt.export: error:")
    assert list(tmp_path.iterdir()) == []


# (format, why its output cannot be written)
UNWRITABLE = [(format, kind) for format in sorted(FORMATS) for kind in ("parent is a file", "read-only")]


def _unwritable(tmp_path, format, kind):
    """An output path of `format` that cannot be written, and the words of its refusal."""
    suffix = FORMATS[format].suffix or ""
    if kind == "parent is a file":
        (tmp_path / "plain_file").write_text("x")
        return f"{tmp_path}/plain_file/m{suffix}", "is not a directory"
    # Permission bits do not stop root; sysfs refuses new entries to everyone.
    if os.geteuid() == 0:
        return f"/sys/keras_cvt_export/m{suffix}", "Operation not permitted"
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    return f"{locked}/sub/m{suffix}", "Permission denied"


@pytest.mark.parametrize("format, kind", UNWRITABLE)
def test_export_refuses_an_unwritable_path_before_converting(tiny_model, tmp_path, monkeypatch, format, kind):
    import importlib

    path, words = _unwritable(tmp_path, format, kind)
    imported = []
    monkeypatch.setattr(importlib, "import_module", lambda name, *a: imported.append(name))
    with pytest.raises(ValueError, match=rf"^cannot write `path` '{path}': .*{words}"):
        export(tiny_model, path, format=format)
    assert imported == []  # no writer was even looked up


@pytest.mark.parametrize("format, kind", UNWRITABLE)
def test_cli_refuses_an_unwritable_output_before_reading_weights(tmp_path, capsys, monkeypatch, format, kind):
    from keras_cvt import sources

    path, words = _unwritable(tmp_path, format, kind)
    resolved = []
    monkeypatch.setattr(sources, "resolve_weights", lambda *a, **k: resolved.append(a))
    with pytest.raises(SystemExit) as exit_info:
        export_cli.main(["--model", "cvt13", "--weights", "imagenet", "--format", format, "--output", path])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"python -m keras_cvt.export: error: cannot write `--output` '{path}'") and words in error
    assert resolved == []


def _layer_norm_graph(read_the_difference_too):
    """keras_cvt's LayerNorm as tf2onnx writes it, over the last axis of `x` (2, 5, 4); with
    `read_the_difference_too`, `x - mean` is a second output, which a fusion must keep."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    constants = {
        "gamma": rng.normal(size=4).astype(np.float32),
        "beta": rng.normal(size=4).astype(np.float32),
        "epsilon": np.array(1e-5, np.float32),
    }
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["mean"], axes=[-1], keepdims=1),
        helper.make_node("Sub", ["x", "mean"], ["centered"]),
        helper.make_node("Mul", ["centered", "centered"], ["square"]),
        helper.make_node("ReduceMean", ["square"], ["variance"], axes=[2], keepdims=1),
        helper.make_node("Add", ["variance", "epsilon"], ["shifted"]),
        helper.make_node("Sqrt", ["shifted"], ["root"]),
        helper.make_node("Reciprocal", ["root"], ["reciprocal"]),
        helper.make_node("Mul", ["reciprocal", "gamma"], ["scale"]),
        helper.make_node("Mul", ["centered", "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "beta"], ["y"]),
    ]
    outputs = ["y", "centered"] if read_the_difference_too else ["y"]
    graph = helper.make_graph(
        nodes,
        "layer_norm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, 4])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [2, 5, None]) for name in outputs],
        [numpy_helper.from_array(value, name) for name, value in constants.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("read_the_difference_too", [False, True])
def test_onnx_layer_norm_fusion(read_the_difference_too):
    from keras_cvt.export.onnx import fuse_layer_norms

    model = _layer_norm_graph(read_the_difference_too)
    x = np.random.default_rng(4).normal(size=(2, 5, 4)).astype(np.float32) * 3 + 1
    before = onnxruntime.InferenceSession(model.SerializeToString()).run(None, {"x": x})
    assert fuse_layer_norms(model) == (0 if read_the_difference_too else 1)
    onnx.checker.check_model(model)
    unfused = ["ReduceMean", "Sub", "Mul", "ReduceMean", "Add", "Sqrt", "Reciprocal", "Mul", "Mul", "Add"]
    types = [node.op_type for node in model.graph.node]
    assert types == (unfused if read_the_difference_too else ["LayerNormalization"])
    after = onnxruntime.InferenceSession(model.SerializeToString()).run(None, {"x": x})
    for a, b in zip(before, after):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    if not read_the_difference_too:
        assert [i.name for i in model.graph.initializer] == ["gamma", "beta"]  # epsilon is an attribute now
