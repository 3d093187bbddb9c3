"""Command-line arguments that examples/train.py and examples/evaluate.py share."""

import dataclasses

from keras_cvt import pretrained
from keras_cvt.architectures import VARIANTS


def int_list(text):
    return tuple(int(x) for x in text.split(","))


def add_data_arguments(parser):
    """A TFDS dataset or an image folder, and how to read the dataset."""
    group = parser.add_argument_group("data")
    source = group.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", help="TFDS image classification dataset, e.g. tf_flowers")
    source.add_argument("--image-folder", help="folder with one sub-folder of images per class")
    group.add_argument("--data-dir", help="TFDS data directory")
    group.add_argument("--image-key", default="image", help="TFDS feature holding the image")
    group.add_argument("--label-key", default="label", help="TFDS feature holding the label")
    group.add_argument(
        "--no-download",
        action="store_true",
        help="do not download/prepare the TFDS dataset (always the case under --strategy "
        "multiworker: prepare it beforehand)",
    )
    return group


def add_architecture_arguments(parser):
    """`--model`, or a custom architecture with `--depths`, `--embed-dims`, `--num-heads`."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", choices=sorted(VARIANTS), default="cvt13")
    group.add_argument(
        "--depths",
        type=int_list,
        help="custom architecture, e.g. 1,2,10 (with --embed-dims and --num-heads; replaces --model)",
    )
    group.add_argument("--embed-dims", type=int_list)
    group.add_argument("--num-heads", type=int_list)
    return group


def architecture(parser, args):
    """The `architecture` argument of `build_model`: a variant name or a custom config."""
    custom = (args.depths, args.embed_dims, args.num_heads)
    if not any(custom):
        return args.model
    if not all(custom):
        parser.error("--depths, --embed-dims and --num-heads go together")
    return {"depths": args.depths, "embed_dims": args.embed_dims, "num_heads": args.num_heads}


def evaluation_transform_record(args, crop=True):
    """The record (a `keras_cvt.pretrained.Transform`; `keras_cvt.transforms.from_record` makes
    it a function) of the evaluation transform of `--weights` (`keras_cvt.pretrained.transform_for`
    of `--model`; a custom architecture has no pretrained weights of its own), at `--image-size`
    when given, and resizing straight to it without `crop`."""
    if args.depths:
        transform = pretrained.DEFAULT_TRANSFORM
    else:
        transform = pretrained.transform_for(args.model, args.weights)
    if args.image_size:
        transform = dataclasses.replace(transform, size=args.image_size)
    return transform if crop else dataclasses.replace(transform, crop_ratio=None)
