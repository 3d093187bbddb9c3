"""int8 exports: the ONNX, OpenVINO and LiteRT files of `keras_cvt.export` with int8 weights and
activations, calibrated on images, for the CPUs' int8 instructions (AVX-512 VNNI, AMX).

- `"openvino"`: the float32 IR quantized by NNCF (`nncf.quantize`, its transformer preset:
  SmoothQuant, symmetric int8 weights per output channel, softmax and LayerNorm left in float).
- `"onnx"`: the float32 file quantized by ONNX Runtime (`quantize_static`, QDQ format, int8
  weights per output channel, uint8 activations), its matrix multiplications and convolutions.
- `"tflite"`: LiteRT's converter with a representative dataset: int8 weights (per channel)
  and activations wherever LiteRT has an int8 kernel, float elsewhere, which XNNPACK runs.

Each keeps the float file's interface: `pixels` (float32, RGB in [0, 255]) in, `probabilities`
out. The calibration images are pixels as the file takes them (`keras_cvt.export.calibration`
reads them from a folder, the shipped photos or a TFDS dataset, through an evaluation
transform); a few hundred images of the data the model will see are enough. The quantizers
(nncf, onnxruntime) are the `int8` extra.
"""

import contextlib
import importlib
import inspect
import os
import tempfile

import numpy as np

from keras_cvt import atomic, attention
from keras_cvt.export.calibration import MAX_CALIBRATION_SIZE, calibration_pixels
from keras_cvt.export.formats import FORMATS
from keras_cvt.export.tflite import _tflite_converter
from keras_cvt.pretrained import DEFAULT_TRANSFORM

# The formats with an int8 form.
INT8_FORMATS = ("onnx", "openvino", "tflite")


def _calibration_array(calibration, input_size):
    """`calibration` as float32 `[n, size, size, 3]` pixels that the file at `input_size` takes."""
    if calibration is None:
        raise ValueError(
            "quantize='int8' needs `calibration`: pixels [n, height, width, 3] in [0, 255] "
            "(keras_cvt.export.calibration.calibration_pixels reads a folder, the shipped photos or a TFDS dataset)"
        )
    if isinstance(calibration, (str, os.PathLike)):
        calibration = calibration_pixels(calibration, input_size or DEFAULT_TRANSFORM.size)
    pixels = np.asarray(calibration)
    if not (np.issubdtype(pixels.dtype, np.integer) or np.issubdtype(pixels.dtype, np.floating)):
        raise TypeError(f"`calibration` must hold numbers (RGB in [0, 255]), got dtype {pixels.dtype}")
    if pixels.ndim != 4 or pixels.shape[-1] != 3 or len(pixels) == 0:
        raise ValueError(f"`calibration` must have shape (n >= 1, height, width, 3), got shape {pixels.shape}")
    if len(pixels) > MAX_CALIBRATION_SIZE:
        raise ValueError(f"`calibration` holds {len(pixels)} images, more than {MAX_CALIBRATION_SIZE}")
    if input_size is not None and pixels.shape[1:3] != (input_size, input_size):
        raise ValueError(
            f"`calibration` images must be {input_size} x {input_size} (the input_size), got shape {pixels.shape}"
        )
    pixels = pixels.astype(np.float32)
    if not np.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > 255:
        raise ValueError("`calibration` pixels must be finite and in [0, 255]")
    return pixels


def export_int8(model, path, format, calibration, **options):
    """Writes `model` as an int8 `format` file (one of INT8_FORMATS) to `path`, calibrated on
    `calibration` (pixels `[n, height, width, 3]` in [0, 255], or a source that
    `calibration.calibration_pixels` reads at `input_size` with the default transform: a
    folder, "photos" or "tfds:NAME[@SPLIT]"); `options` are the float export's, `input_size`
    defaulting as there. Returns the absolute path."""
    if format not in INT8_FORMATS:
        raise ValueError(f"quantize='int8' is for the formats {list(INT8_FORMATS)}, not {format!r}")
    spec = FORMATS[format]
    input_size = options.pop(spec.size_option, inspect.signature(_writer(format)).parameters[spec.size_option].default)
    pixels = _calibration_array(calibration, input_size)
    quantizer = {"onnx": _onnx_int8, "openvino": _openvino_int8, "tflite": _tflite_int8}[format]
    return quantizer(model, os.fspath(path), pixels, input_size, options)


def _writer(format):
    """The float export function of `format` (its module imported on first use)."""
    spec = FORMATS[format]
    return getattr(importlib.import_module(spec.module), spec.function)


def _batches(pixels):
    return [pixels[i : i + 1] for i in range(len(pixels))]


def _tflite_int8(model, path, pixels, input_size, options):
    if options.get("quantization") is not None:
        raise ValueError("quantize='int8' replaces `quantization`: pass one of them")
    with _tflite_converter(model, "dynamic_range", input_size) as converter:
        converter.representative_dataset = lambda: ([batch] for batch in _batches(pixels))
        flatbuffer = converter.convert()
    return atomic.write_bytes(path, flatbuffer)


@contextlib.contextmanager
def _float_file(model, format, suffix, input_size, options):
    """Yields the path of `model`'s float32 `format` file, in a temporary folder. Its attention
    score matrices are whole (`keras_cvt.attention.whole_scores`): the quantizers quantize the
    main graph's operations, not those in a loop's or a conditional's body."""
    with tempfile.TemporaryDirectory() as directory, attention.whole_scores():
        yield _writer(format)(model, os.path.join(directory, "float32" + suffix), input_size=input_size, **options)


def _onnx_int8(model, path, pixels, input_size, options):
    if not path.endswith(".onnx"):
        raise ValueError(f"`path` must end with .onnx, got {path!r}")
    with _float_file(model, "onnx", ".onnx", input_size, options) as float_path:
        with atomic.publish_file(path) as temporary:
            quantize_onnx_file(float_path, temporary, pixels)
    return os.path.abspath(path)


def quantize_onnx_file(float_path, path, pixels):
    """ONNX Runtime's static quantization of the float ONNX file `float_path` (input `pixels`)
    into `path`, as `export(format="onnx", quantize="int8")` does, calibrated on `pixels`."""
    from onnxruntime import quantization

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self._batches = iter(_batches(pixels))

        def get_next(self):
            batch = next(self._batches, None)
            return None if batch is None else {"pixels": batch}

    quantization.quantize_static(
        float_path,
        path,
        Reader(),
        quant_format=quantization.QuantFormat.QDQ,
        per_channel=True,
        activation_type=quantization.QuantType.QUInt8,
        weight_type=quantization.QuantType.QInt8,
        op_types_to_quantize=ONNX_QUANTIZED_OPS,
    )


# The operations ONNX Runtime quantizes: the multiply-adds. Softmax, LayerNormalization and the
# elementwise operations stay in float (QDQ around them would add conversions and error).
ONNX_QUANTIZED_OPS = ["MatMul", "Gemm", "Conv"]


def _openvino_int8(model, path, pixels, input_size, options):
    import nncf
    import openvino

    if not path.endswith(".xml"):
        raise ValueError(f"`path` must end with .xml (its weights go to the .bin beside it), got {path!r}")
    with _float_file(model, "openvino", ".xml", input_size, options) as float_path:
        converted = openvino.Core().read_model(float_path)
        quantized = nncf.quantize(
            converted,
            nncf.Dataset(_batches(pixels)),
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(pixels),
        )
        # The float export's module, which imports openvino (and so is imported on first use).
        importlib.import_module(FORMATS["openvino"].module).save_ir(quantized, path)
    return os.path.abspath(path)
