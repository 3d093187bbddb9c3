"""Exports of CvT classifiers for the runtimes people deploy to, one module per format
(`keras_cvt.export.formats` lists them):

- `saved_model`: a TF Serving SavedModel that takes encoded images (`export_for_serving`);
- `tflite`: a LiteRT (TFLite) file, pixels in, probabilities out (`export_tflite`,
  `TFLiteClassifier`);
- `onnx`: an ONNX file, the same input and output (`export_onnx`);
- `openvino`: an OpenVINO IR, the same input and output (`export_openvino`);
- with `quantize="int8"`, the last three with int8 weights and activations, calibrated on
  images (`keras_cvt.export.int8`).

`export(model, path, format=...)` writes any of them; `load_exported(path)` runs any file of
them (or a SavedModel's pixels signature) on its runtime, pixels in, probabilities out
(`keras_cvt.export.runners`). Each writes through `keras_cvt.atomic`,
so a failed export leaves nothing behind (a full disk is a `keras_cvt.atomic.WriteError`), and
`export` holds the target's lock (`keras_cvt.locks`), so two exports to one path do not
interleave: the second stops at once with `LockedError`. Each wraps the model in `classifier.Classifier` (its
folded inference form, pixels in [0, 255] in, probabilities out). The command line is
`python -m keras_cvt.export` (`keras_cvt.export.cli`).

The ONNX and OpenVINO modules (and their converters, the `export` extra) are imported on first
use.
"""

import importlib
import os

from keras_cvt import locks
from keras_cvt.atomic import check_writable
from keras_cvt.export.formats import DEFAULT_FORMAT, FORMATS, QUANTIZERS
from keras_cvt.export.runners import ExportedClassifier, load_exported
from keras_cvt.export.saved_model import export_for_serving
from keras_cvt.export.tflite import TFLiteClassifier, export_tflite

# The writers not imported above, by name.
_LAZY = {spec.function: spec.module for spec in FORMATS.values()}

__all__ = [
    "FORMATS",
    "ExportedClassifier",
    "TFLiteClassifier",
    "export",
    "export_for_serving",
    "export_onnx",
    "export_openvino",
    "export_tflite",
    "load_exported",
]


def export(model, path, format=DEFAULT_FORMAT, quantize=None, calibration=None, **options):
    """Writes `model` in `format` to `path`; returns the absolute path written.

    Args:
        model: a CvT classifier (`include_top=True`).
        path: the output: a directory for `"saved_model"`, else a file ending in the format's
            suffix (`.tflite`, `.onnx`, `.xml`).
        format: one of `FORMATS` (`"saved_model"`, `"tflite"`, `"onnx"`, `"openvino"`).
        quantize: None (float32), or `"int8"` for an int8 onnx, openvino or tflite file
            (`keras_cvt.export.int8`), which needs `calibration`.
        calibration: with `quantize="int8"`, the calibration images: pixels `[n, height, width,
            3]` in [0, 255] as the file takes them, or a source that
            `keras_cvt.export.calibration.calibration_pixels` reads with the default transform
            (a folder of images, `"photos"`, `"tfds:NAME[@SPLIT]"`).
        **options: the options of the format's function (`export_for_serving`,
            `export_tflite`, `export_onnx`, `export_openvino`), such as `input_size`.

    Raises:
        ValueError: an unknown format, an option the format does not take, a path without
            its suffix or one that cannot be written, before the model is traced.
        keras_cvt.locks.LockedError: another process is exporting to `path`.
        keras_cvt.atomic.WriteError: `path` could not be written (a full disk); what was there
            before stays.
    """
    try:
        spec = FORMATS[format]
    except (KeyError, TypeError):
        raise ValueError(f"`format` must be one of {sorted(FORMATS)}, got format={format!r}") from None
    known = (spec.size_option,) + spec.options
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"format={format!r} takes the options {list(known)}, got {unknown}")
    if spec.suffix is not None and not os.fspath(path).endswith(spec.suffix):
        raise ValueError(f"`path` of a {format} export must end with {spec.suffix}, got {os.fspath(path)!r}")
    if quantize is not None or calibration is not None:
        if quantize not in QUANTIZERS:
            raise ValueError(f"`quantize` must be None or one of {list(QUANTIZERS)}, got quantize={quantize!r}")
    # Before the model is folded, traced or converted (tens of seconds, gigabytes).
    check_writable(path, "path")
    if quantize is not None:
        with locks.exclusive(path, "export target"):
            return importlib.import_module(QUANTIZERS[quantize]).export_int8(model, path, format, calibration, **options)
    writer = getattr(importlib.import_module(spec.module), spec.function)
    with locks.exclusive(path, "export target"):
        return writer(model, path, **options)


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'keras_cvt.export' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
