"""`python -m keras_cvt.export`: a CvT classifier in any format of `keras_cvt.export.formats`.

    python -m keras_cvt.export --model cvt13 --weights imagenet --output models/cvt13/1
    python -m keras_cvt.export --format onnx --model cvt13 --weights imagenet --output cvt13.onnx
    python -m keras_cvt.export --format openvino --model cvt13 --weights imagenet --output cvt13.xml
    python -m keras_cvt.export --format tflite --model cvt13 --weights my.weights.h5 --output m.tflite \\
        --size 224 --quantization float16
    python -m keras_cvt.export --format openvino --model cvt13 --weights imagenet --output cvt13_int8.xml \\
        --size 224 --quantize int8 --calibration my_images/ --calibration-size 300

`--format saved_model` (the default) writes a TF Serving SavedModel that takes encoded images:
with a pretrained name (see `keras_cvt.available_weights()`) the images are transformed as
that checkpoint was evaluated (`keras_cvt.pretrained.transform_for`); `--size` and
`--crop-ratio` override it; with a `.weights.h5` file they default to `DEFAULT_TRANSFORM`'s,
and the number of classes is read from the file. `--max-pixels` bounds the pixels (height x
width) the server decodes per image, and resizes it to; larger images are refused by name.
`--max-request-pixels` bounds them per request.
See `keras_cvt.export.saved_model` for the signatures.

`--format tflite|onnx|openvino` writes a file that takes pixels (`float32`, `[batch, height,
width, 3]`, RGB in [0, 255], already transformed) and returns probabilities: any batch, and
any height and width unless `--size` fixes them. The transform to apply is printed.

`--quantize int8` (onnx, openvino, tflite) writes the int8 file of `keras_cvt.export.int8`,
calibrated on `--calibration-size` images of `--calibration` (a folder, `photos` or
`tfds:NAME[@SPLIT]`: `keras_cvt.export.calibration`), transformed as the weights were
evaluated (at `--size`, or the checkpoint's size).

An existing output is replaced only with `--overwrite`; a second export to the same output
while one runs stops at once, naming the process that holds it. Errors (a full disk included:
what was there stays) are one line, exit status 2.
"""

import argparse
import os
import sys

from keras_cvt import architectures, locks, pretrained, sources, variants
from keras_cvt.atomic import check_writable
from keras_cvt.locks import LockedError
from keras_cvt.export import export
from keras_cvt.export import saved_model as serving
from keras_cvt.export import calibration
from keras_cvt.export.calibration import DEFAULT_CALIBRATION_SIZE, MAX_CALIBRATION_SIZE
from keras_cvt.export.formats import DEFAULT_FORMAT, DEFAULT_ONNX_OPSET, FORMATS, QUANTIZERS
from keras_cvt.export.int8 import INT8_FORMATS
from keras_cvt.export.tflite import TFLITE_QUANTIZATIONS

_UNSET = object()


def evaluation_settings(variant, weights, size=None, crop_ratio=_UNSET):
    """`(image_size, crop_ratio)` of the export: the checkpoint's unless given.

    Raises ValueError (listing the names) for a name `variant` has no checkpoint of.
    """
    transform = pretrained.transform_for(variant, weights)
    return (
        transform.size if size is None else size,
        transform.crop_ratio if crop_ratio is _UNSET else crop_ratio,
    )


def classifier_for_export(variant, weights):
    """The classifier to export, taking images of any size (for `predict_pixels`)."""
    resolved = sources.resolve_weights(weights, variant)
    if resolved.classes is None:
        raise ValueError(f"`--weights` {weights!r} has no classifier to serve")
    return variants.BUILDERS[variant](weights=weights, input_shape=(None, None, 3))


def _crop_ratio(text):
    if text.lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1] or 'none', got {text!r}") from None


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


# The options of one format or another (argparse destinations), and their defaults.
_DEFAULTS = {
    "crop_ratio": _UNSET,
    "top_k": 5,
    "labels": None,
    "max_pixels": serving.DEFAULT_MAX_PIXELS,
    "max_request_pixels": serving.DEFAULT_MAX_REQUEST_PIXELS,
    "quantization": None,
    "opset": DEFAULT_ONNX_OPSET,
}


def _parser():
    parser = argparse.ArgumentParser(
        prog="python -m keras_cvt.export",
        description="Export a CvT classifier: a TF Serving SavedModel that takes encoded images (the "
        "default), or a LiteRT, ONNX or OpenVINO file that takes pixels.",
    )
    parser.add_argument(
        "--format",
        default=DEFAULT_FORMAT,
        choices=sorted(FORMATS),
        help="; ".join(f"{f.name}: {f.summary}" for f in FORMATS.values()) + f" (default: {DEFAULT_FORMAT})",
    )
    parser.add_argument("--model", required=True, choices=sorted(architectures.VARIANTS), help="the architecture")
    parser.add_argument(
        "--weights",
        required=True,
        help=f"a pretrained name ({', '.join(sorted({p.name for p in pretrained.PRETRAINED}))}) or a .weights.h5 file",
    )
    parser.add_argument(
        "--output",
        required=True,
        help="saved_model: the directory (TF Serving wants a numbered version, e.g. models/cvt13/1); "
        "the other formats: the file, ending in "
        + ", ".join(f"{f.suffix} ({f.name})" for f in FORMATS.values() if f.suffix),
    )
    parser.add_argument(
        "--size",
        type=_positive_int,
        default=None,
        help="image height and width (saved_model default: the checkpoint's, or "
        f"{pretrained.DEFAULT_TRANSFORM.size}; the other formats: any size unless given)",
    )
    parser.add_argument(
        "--crop-ratio",
        type=_crop_ratio,
        default=_UNSET,
        help="saved_model: centre crop ratio, or 'none' for a straight resize (default: the checkpoint's, or "
        f"{pretrained.DEFAULT_TRANSFORM.crop_ratio})",
    )
    parser.add_argument(
        "--top-k",
        type=_positive_int,
        default=_UNSET,
        help=f"saved_model: classes returned per image (default: {_DEFAULTS['top_k']})",
    )
    parser.add_argument(
        "--labels",
        default=_UNSET,
        help="saved_model: a UTF-8 text file with one label per line, in class order (default: ImageNet "
        "names for 1000 classes, class indices otherwise)",
    )
    parser.add_argument(
        "--max-pixels",
        type=_positive_int,
        default=_UNSET,
        help="saved_model: the most pixels (height x width) decoded per image, and produced by its resize "
        f"before the centre crop; larger images are refused (default: {serving.DEFAULT_MAX_PIXELS:,})",
    )
    parser.add_argument(
        "--max-request-pixels",
        type=_positive_int,
        default=_UNSET,
        help="saved_model: the most pixels per request, summed over its images (each image's pixels and "
        "those of its resize before the centre crop), checked from the headers before decoding "
        f"(default: {serving.DEFAULT_MAX_REQUEST_PIXELS:,})",
    )
    parser.add_argument(
        "--quantization",
        choices=[q for q in TFLITE_QUANTIZATIONS if q is not None],
        default=_UNSET,
        help="tflite: float16 or int8 (dynamic_range) weights (default: float32)",
    )
    parser.add_argument(
        "--opset", type=_positive_int, default=_UNSET, help=f"onnx: the ONNX opset (default: {DEFAULT_ONNX_OPSET})"
    )
    parser.add_argument(
        "--quantize",
        choices=sorted(QUANTIZERS),
        default=None,
        help="onnx, openvino, tflite: int8 weights and activations, calibrated on --calibration "
        "(OpenVINO: NNCF; ONNX: ONNX Runtime's static QDQ; LiteRT: full-integer where it has kernels)",
    )
    parser.add_argument(
        "--calibration",
        default=None,
        help=f"with --quantize: {calibration.SOURCES} (its {calibration.DEFAULT_TFDS_SPLIT} split unless named; "
        "TFDS_DATA_DIR says where), transformed as the weights were evaluated",
    )
    parser.add_argument(
        "--calibration-size",
        type=_positive_int,
        default=None,
        help=f"with --quantize: the images drawn from --calibration (default: {DEFAULT_CALIBRATION_SIZE}, at most "
        f"{MAX_CALIBRATION_SIZE})",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    return parser


def _options(parser, args, spec):
    """The format's options from `args`, after refusing those of other formats."""
    options = {}
    for name, default in _DEFAULTS.items():
        value = getattr(args, name)
        given = value is not _UNSET
        if given and name not in spec.options:
            takers = [f.name for f in FORMATS.values() if name in f.options]
            parser.error(f"--{name.replace('_', '-')} applies to --format {' or '.join(takers)}, not {spec.name}")
        if name in spec.options:
            options[name] = value if given else default
    return options


def _check_quantize(parser, args, spec):
    """Refuses the int8 flags where they do not apply, before anything is read."""
    if args.quantize is None:
        for flag in ("calibration", "calibration_size"):
            if getattr(args, flag) is not None:
                parser.error(f"--{flag.replace('_', '-')} applies with --quantize only")
        return
    if spec.name not in INT8_FORMATS:
        parser.error(f"--quantize applies to --format {' or '.join(INT8_FORMATS)}, not {spec.name}")
    if args.quantization is not _UNSET:
        parser.error("--quantize int8 replaces --quantization: pass one of them")
    if args.calibration is None:
        parser.error(f"--quantize needs --calibration: {calibration.SOURCES}, with images like those the model will see")
    if args.calibration_size is not None and args.calibration_size > MAX_CALIBRATION_SIZE:
        parser.error(f"--calibration-size must be at most {MAX_CALIBRATION_SIZE}, got {args.calibration_size}")


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    spec = FORMATS[args.format]
    options = _options(parser, args, spec)
    _check_quantize(parser, args, spec)
    try:
        # First: before the weights are read, downloaded or converted.
        check_writable(args.output, "--output")
        # Before the weights are read or converted: a second export to the same output stops at once.
        with locks.exclusive(args.output, "export target"):
            if spec.suffix is None:
                options["overwrite"] = args.overwrite
                size, options["crop_ratio"] = evaluation_settings(
                    args.model, args.weights, args.size, options["crop_ratio"]
                )
                if options["labels"] is not None:
                    with open(options["labels"], encoding="utf-8") as f:
                        options["labels"] = f.read().splitlines()
            else:
                _check_output_file(args.output, spec, args.overwrite)
                size = args.size
                transform = pretrained.transform_for(args.model, args.weights)
                if args.quantize is not None:
                    # Read (and each image checked) before the model is built.
                    options["quantize"] = args.quantize
                    options["calibration"] = calibration.calibration_pixels(
                        args.calibration,
                        transform.size if size is None else size,
                        transform.crop_ratio,
                        args.calibration_size or DEFAULT_CALIBRATION_SIZE,
                        interpolation=transform.interpolation,
                    )
            model = classifier_for_export(args.model, args.weights)
            path = export(model, args.output, format=spec.name, **{spec.size_option: size}, **options)
    except (ValueError, OSError, LockedError, ImportError) as error:
        parser.error(str(error))
    if spec.suffix is None:
        _report_saved_model(path, size, options)
        return 0
    if args.quantize is not None:
        print(f"{args.quantize}: calibrated on {len(options['calibration'])} images of {args.calibration}")
    print(
        f"{spec.name} written to {path}: input `pixels` float32 [batch, "
        f"{'height, width' if size is None else f'{size}, {size}'}, 3], RGB in [0, 255]; output `probabilities`"
    )
    print(
        f"transform images as the weights were evaluated: keras_cvt.transforms.evaluation_transform("
        f"{transform.size if size is None else size}, crop_ratio={transform.crop_ratio})"
    )
    return 0


def _check_output_file(output, spec, overwrite):
    if not output.endswith(spec.suffix):
        raise ValueError(f"--output of --format {spec.name} must end with {spec.suffix}, got {output!r}")
    if os.path.isdir(output):
        raise ValueError(f"--output {output!r} is a directory; --format {spec.name} writes a file")
    if os.path.exists(output) and not overwrite:
        raise ValueError(f"--output {output!r} exists; pass --overwrite to replace it")


def _report_saved_model(path, size, options):
    print(
        f"SavedModel written to {path} (images transformed to {size} x {size}, crop_ratio={options['crop_ratio']}, "
        f"at most {options['max_pixels']:,} pixels per image, {options['max_request_pixels']:,} per request)"
    )
    print(
        f"signatures: {serving.IMAGES_SIGNATURE} (images -> classes, labels, scores), "
        f"{serving.PIXELS_SIGNATURE} and {serving.PIXELS_UINT8_SIGNATURE} (pixels -> probabilities)"
    )
    if not os.path.basename(path).isdigit():
        print(
            "note: TF Serving loads numbered version directories (models/NAME/1); point its "
            "model base path at the parent of one",
            file=sys.stderr,
        )
