"""Exports a CvT classifier as a TF Serving SavedModel that takes encoded images.

    python -m keras_cvt.export --model cvt13 --weights imagenet --output models/cvt13/1
    python -m keras_cvt.export --model cvt13 --weights my.weights.h5 --output models/mine/1 \\
        --size 224 --crop-ratio 0.875 --labels labels.txt

With a pretrained name (see `keras_cvt.available_weights()`) the images are transformed as
that checkpoint was evaluated (224 with a 0.875 centre crop, or a straight resize to 384);
`--size` and `--crop-ratio` override it. With a `.weights.h5` file they default to 224 and
0.875, and the number of classes is read from the file. `--max-pixels` bounds the pixels
(height x width) the server decodes per image, and resizes it to (default: 50,000,000, about
2 GB of work per image); larger images are refused by name. See `keras_cvt.serving` for
the signatures.
"""

import argparse
import os
import sys

from keras_cvt import architectures, builder, pretrained, variants, weights_file
from keras_cvt.export import saved_model as serving

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
    if pretrained.is_pretrained_name(weights):
        return variants.BUILDERS[variant](weights=weights, input_shape=(None, None, 3))
    path = weights_file.resolve_path(weights)
    classes = weights_file.head_classes(path)
    if classes is None:
        raise ValueError(f"`--weights` file {path!r} has no classifier to serve")
    return builder.CvT(
        **architectures.VARIANTS[variant].config, weights=path, classes=classes, input_shape=(None, None, 3), name=variant
    )


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


def _parser():
    parser = argparse.ArgumentParser(
        prog="python -m keras_cvt.export",
        description="Export a CvT classifier as a TF Serving SavedModel that takes encoded images.",
    )
    parser.add_argument("--model", required=True, choices=sorted(architectures.VARIANTS), help="the architecture")
    parser.add_argument(
        "--weights",
        required=True,
        help="a pretrained name (imagenet, imagenet-384, imagenet22k-384) or a .weights.h5 file",
    )
    parser.add_argument(
        "--output",
        required=True,
        help="the SavedModel directory; TF Serving wants a numbered version, e.g. models/cvt13/1",
    )
    parser.add_argument(
        "--size", type=int, default=None, help="image height and width (default: the checkpoint's, or 224)"
    )
    parser.add_argument(
        "--crop-ratio",
        type=_crop_ratio,
        default=_UNSET,
        help="centre crop ratio, or 'none' for a straight resize (default: the checkpoint's, or 0.875)",
    )
    parser.add_argument("--top-k", type=int, default=5, help="classes returned per image (default: 5)")
    parser.add_argument(
        "--labels",
        default=None,
        help="a UTF-8 text file with one label per line, in class order (default: ImageNet names "
        "for 1000 classes, class indices otherwise)",
    )
    parser.add_argument(
        "--max-pixels",
        type=_positive_int,
        default=serving.DEFAULT_MAX_PIXELS,
        help="the most pixels (height x width) decoded per image, and produced by its resize before "
        f"the centre crop; larger images are refused (default: {serving.DEFAULT_MAX_PIXELS:,})",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output directory")
    return parser


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        size, crop_ratio = evaluation_settings(args.model, args.weights, args.size, args.crop_ratio)
        labels = None
        if args.labels is not None:
            with open(args.labels, encoding="utf-8") as f:
                labels = f.read().splitlines()
        model = classifier_for_export(args.model, args.weights)
        path = serving.export_for_serving(
            model,
            args.output,
            image_size=size,
            crop_ratio=crop_ratio,
            top_k=args.top_k,
            labels=labels,
            max_pixels=args.max_pixels,
            overwrite=args.overwrite,
        )
    except (ValueError, OSError) as error:
        parser.error(str(error))
    print(
        f"SavedModel written to {path} (images transformed to {size} x {size}, crop_ratio={crop_ratio}, "
        f"at most {args.max_pixels:,} pixels per image)"
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
    return 0

