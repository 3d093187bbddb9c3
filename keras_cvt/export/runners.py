"""An exported classifier file as a function `pixels -> probabilities`, on the runtime its
format is for (`load_exported`): what evaluates int8 and float files alike
(examples/evaluate.py --exported, benchmarks/int8_accuracy.py).

The runtimes are imported on first use: ONNX Runtime for `.onnx`, OpenVINO for `.xml`, LiteRT
(or TensorFlow's copy of it) for `.tflite`, TensorFlow for a SavedModel folder.
"""

import os

import numpy as np
import tensorflow as tf

from keras_cvt.export.classifier import float_pixels
from keras_cvt.export.formats import FORMATS
from keras_cvt.export.saved_model import PIXELS_SIGNATURE
from keras_cvt.export.tflite import TFLiteClassifier

# How to install the runtime of each format that needs one.
_INSTALL = {
    "onnxruntime": "pip install onnxruntime, or keras-cvt[int8]",
    "openvino": "pip install openvino, or keras-cvt[export]",
}


class ExportedClassifier:
    """An exported classifier file as a function: pixels `[n, height, width, 3]` (float32 RGB in
    [0, 255], as `keras_cvt.transforms.evaluation_transform` makes them) -> probabilities
    `[n, classes]` (a numpy array).

    Attributes:
        path: the file (or SavedModel folder), absolute.
        format: its format, a key of `keras_cvt.export.FORMATS`.
        input_size: `(height, width)` the file takes, or None where it takes any.
        classes: the number of classes of its output.
    """

    def __init__(self, path, format, run, input_size, classes):
        self.path, self.format, self._run = path, format, run
        self.input_size, self.classes = input_size, classes

    def __call__(self, pixels):
        pixels = np.asarray(pixels)
        if pixels.ndim != 4 or pixels.shape[-1] != 3:
            raise ValueError(f"`pixels` must have shape (n, height, width, 3) (RGB), got shape {pixels.shape}")
        if self.input_size is not None and tuple(pixels.shape[1:3]) != self.input_size:
            height, width = self.input_size
            raise ValueError(
                f"`pixels` must have shape (n, {height}, {width}, 3): {self.path} takes {height} x {width} "
                f"images, got shape {pixels.shape}"
            )
        pixels = float_pixels(pixels)
        if len(pixels) == 0:
            return np.zeros([0, self.classes], np.float32)
        return np.asarray(self._run(pixels))


def load_exported(path):
    """Opens an exported classifier (`keras_cvt.export.export`'s files, float32 or int8) on its
    runtime: `.onnx` on ONNX Runtime, `.xml` (with its `.bin`) on OpenVINO, `.tflite` on LiteRT
    (`TFLiteClassifier`), a SavedModel folder through its `predict_pixels` signature.

    Returns:
        An `ExportedClassifier`: pixels `[n, height, width, 3]` -> probabilities `[n, classes]`.

    Raises:
        ValueError: `path` does not exist, has no known suffix, is a folder but no SavedModel,
            cannot be read by its runtime, or is no classifier of this package's interface
            (input `pixels` float32 `[?, height, width, 3]`, output `probabilities`
            `[?, classes]`).
        ImportError: the file's runtime is not installed (the message names the package).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a path, got {type(path).__name__}")
    path = os.path.abspath(os.fspath(path))
    if not os.path.exists(path):
        raise ValueError(f"exported file not found: {path!r}")
    if os.path.isdir(path):
        if not any(os.path.isfile(os.path.join(path, name)) for name in ("saved_model.pb", "saved_model.pbtxt")):
            raise ValueError(f"{path!r} is a folder but not a SavedModel (no saved_model.pb in it)")
        return _saved_model(path)
    suffixes = {spec.suffix: name for name, spec in FORMATS.items() if spec.suffix}
    format = next((name for suffix, name in suffixes.items() if path.endswith(suffix)), None)
    if format is None:
        raise ValueError(
            f"{path!r} is no exported classifier: expected a file ending in one of {sorted(suffixes)} or a "
            "SavedModel folder"
        )
    return {"tflite": _tflite, "onnx": _onnx, "openvino": _openvino}[format](path)


def _missing(path, package):
    return ImportError(f"running {path!r} needs the {package} package: {_INSTALL[package]}")


def _check_interface(path, inputs, outputs):
    """`(input_size, classes)` of a file whose `inputs` and `outputs` are lists of `(name, shape,
    is_float32)`, shapes with None for free dimensions; ValueError unless they are ours."""
    expected = "one input `pixels` (float32, [?, height, width, 3]) and one output `probabilities` ([?, classes])"
    if len(inputs) != 1 or len(outputs) != 1:
        found = f"{[name for name, _, _ in inputs]} -> {[name for name, _, _ in outputs]}"
        raise ValueError(f"{path} is no classifier exported by keras_cvt: expected {expected}, it has {found}")
    (name, shape, is_float32), (output, output_shape, _) = inputs[0], outputs[0]
    if name != "pixels" or len(shape) != 4 or shape[0] is not None or shape[3] != 3 or not is_float32:
        raise ValueError(
            f"{path} is no classifier exported by keras_cvt: expected {expected}, its input is {name!r} of shape "
            f"{_shape(shape)}{'' if is_float32 else ' (not float32)'}"
        )
    if output != "probabilities" or len(output_shape) != 2 or output_shape[1] is None:
        raise ValueError(
            f"{path} is no classifier exported by keras_cvt: expected {expected}, its output is {output!r} of "
            f"shape {_shape(output_shape)}"
        )
    height, width = shape[1:3]
    return (None if height is None or width is None else (height, width)), output_shape[1]


def _shape(shape):
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _onnx(path):
    try:
        import onnxruntime
    except ImportError:
        raise _missing(path, "onnxruntime") from None
    try:
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime's errors derive from Exception only
        raise ValueError(f"ONNX Runtime cannot read {path}: {_first_line(error)}") from None

    def dims(shape):
        return [d if isinstance(d, int) else None for d in shape]

    input_size, classes = _check_interface(
        path,
        [(i.name, dims(i.shape), i.type == "tensor(float)") for i in session.get_inputs()],
        [(o.name, dims(o.shape), o.type == "tensor(float)") for o in session.get_outputs()],
    )
    return ExportedClassifier(
        path, "onnx", lambda x: session.run(["probabilities"], {"pixels": x})[0], input_size, classes
    )


def _openvino(path):
    try:
        import openvino
    except ImportError:
        raise _missing(path, "openvino") from None
    core = openvino.Core()
    try:
        model = core.read_model(path)
    except RuntimeError as error:
        raise ValueError(f"OpenVINO cannot read {path} (and its .bin): {_first_line(error)}") from None

    def port(node):
        shape = node.get_partial_shape()
        dims = [d.get_length() if d.is_static else None for d in shape] if shape.rank.is_static else []
        return node.get_any_name(), dims, node.get_element_type() == openvino.Type.f32

    input_size, classes = _check_interface(path, [port(i) for i in model.inputs], [port(o) for o in model.outputs])
    # f32, not the CPU plugin's default (bfloat16 on CPUs with AVX-512 BF16 or AMX): an int8
    # file then runs int8 where NNCF put quantizers and float32 elsewhere, the numbers its
    # calibration was measured with, on any CPU.
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return ExportedClassifier(path, "openvino", lambda x: compiled(x)["probabilities"], input_size, classes)


def _tflite(path):
    try:
        classifier = TFLiteClassifier(path)
    except (ValueError, RuntimeError, KeyError) as error:
        raise ValueError(f"LiteRT cannot read {path} as an exported classifier: {_first_line(error)}") from None
    height, width, _ = classifier.input_shape
    input_size = None if height is None or width is None else (height, width)
    return ExportedClassifier(path, "tflite", classifier, input_size, classifier.classes)


def _saved_model(path):
    try:
        loaded = tf.saved_model.load(path)
    except (OSError, ValueError, RuntimeError) as error:
        raise ValueError(f"TensorFlow cannot load the SavedModel {path}: {_first_line(error)}") from None
    signature = loaded.signatures.get(PIXELS_SIGNATURE)
    if signature is None:
        raise ValueError(
            f"{path} is no SavedModel of keras_cvt.export: it has no {PIXELS_SIGNATURE!r} signature "
            f"(its signatures: {sorted(loaded.signatures)})"
        )
    _, inputs = signature.structured_input_signature
    outputs = signature.structured_outputs
    input_size, classes = _check_interface(
        path,
        [(name, spec.shape.as_list(), spec.dtype == tf.float32) for name, spec in inputs.items()],
        [(name, spec.shape.as_list(), spec.dtype == tf.float32) for name, spec in outputs.items()],
    )
    def run(pixels):
        # `loaded` held here: its variables are freed with it, and the signature then fails.
        return loaded.signatures[PIXELS_SIGNATURE](pixels=tf.constant(pixels))["probabilities"].numpy()

    return ExportedClassifier(path, "saved_model", run, input_size, classes)


def _first_line(error):
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
