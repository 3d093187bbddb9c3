"""The export formats, one record each: adding a format is one module with an export function
and one entry in `FORMATS`.

Pure data: the modules are imported by `keras_cvt.export.export` when their format is asked
for, so the runtimes' converters (tf2onnx, openvino) are needed only by those who use them.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Format:
    """An export format.

    Attributes:
        name: what `--format` and `export(format=...)` call it.
        module, function: where the function `function(model, path, **options)` that writes it is.
        suffix: what the output path must end with; None for a directory.
        size_option: the option of `function` that fixes the input size.
        options: the other options of `function` (command-line flags: `--` and dashes).
        summary: one line for `--help`.
    """

    name: str
    module: str
    function: str
    suffix: str | None
    size_option: str
    options: tuple
    summary: str


FORMATS = {
    f.name: f
    for f in (
        Format(
            "saved_model",
            "keras_cvt.export.saved_model",
            "export_for_serving",
            None,
            "image_size",
            ("crop_ratio", "top_k", "labels", "max_pixels", "max_request_pixels", "overwrite"),
            "a TF Serving SavedModel directory: encoded images in, top-k classes, labels and scores out",
        ),
        Format(
            "tflite",
            "keras_cvt.export.tflite",
            "export_tflite",
            ".tflite",
            "input_size",
            ("quantization",),
            "a LiteRT (TFLite) file: pixels in, probabilities out",
        ),
        Format(
            "onnx",
            "keras_cvt.export.onnx",
            "export_onnx",
            ".onnx",
            "input_size",
            ("opset",),
            "an ONNX file (ONNX Runtime): pixels in, probabilities out",
        ),
        Format(
            "openvino",
            "keras_cvt.export.openvino",
            "export_openvino",
            ".xml",
            "input_size",
            (),
            "an OpenVINO IR (.xml, and its .bin beside it): pixels in, probabilities out",
        ),
    )
}
DEFAULT_FORMAT = "saved_model"
# What `export(quantize=...)` takes, and the module that writes it (imported on first use: its
# quantizers are the `int8` extra).
QUANTIZERS = {"int8": "keras_cvt.export.int8"}
# ONNX Runtime 1.17 and later run opset 17, in which LayerNormalization is one operation.
DEFAULT_ONNX_OPSET = 17
