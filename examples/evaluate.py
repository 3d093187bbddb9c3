"""Top-1 / top-5 accuracy of any CvT variant and weights on a TFDS split or an image folder.

    python examples/evaluate.py --dataset imagenet2012 --split validation --model cvt13 --weights imagenet
    python examples/evaluate.py --image-folder flowers_val/ --weights runs/flowers/checkpoints/best.weights.h5
    python examples/evaluate.py --dataset imagenet2012 --split validation --model cvt13 --weights imagenet \
        --exported cvt13_int8.xml

Images go through the original evaluation transform of the weights
(`keras_cvt.pretrained.transform_for`): with a pretrained name the checkpoint's own resolution,
crop and filter, with a `.weights.h5` path the 224 models' centre crop; `--image-size` and
`--no-crop` change them. The number of classes is read from the weights.

With `--exported FILE` no Keras model is built: the images (transformed as above, at the size
the file fixes, if it does) are classified by a file of `python -m keras_cvt.export` (`.xml`,
`.onnx`, `.tflite` or a SavedModel folder; float32 or int8) on its runtime
(`keras_cvt.export.load_exported`), and top-1 / top-5 are read from its probabilities.
"""

import argparse
import dataclasses
import sys

import keras

from keras_cvt import training
from keras_cvt.export import load_exported
from keras_cvt.training import cli


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_data_arguments(parser)
    parser.add_argument(
        "--split",
        help="TFDS split (default: 'validation', else 'train[90%%:]', the split "
        "examples/train.py validates on)",
    )
    cli.add_architecture_arguments(parser)
    parser.add_argument(
        "--weights",
        default="imagenet",
        help="pretrained name or .weights.h5 path (with --exported: whose evaluation transform to use)",
    )
    parser.add_argument(
        "--exported",
        metavar="FILE",
        help="evaluate this exported classifier (.xml, .onnx, .tflite, SavedModel folder) instead of "
        "building a Keras model",
    )
    parser.add_argument("--image-size", type=int, help="input size (default: the weights')")
    parser.add_argument("--no-crop", action="store_true", help="resize straight to --image-size (384-style)")
    parser.add_argument("--batch-size", type=int, default=64, help="per replica")
    parser.add_argument(
        "--strategy", choices=training.STRATEGIES, help="for the Keras model (default: auto); not with --exported"
    )
    args = parser.parse_args(argv)
    args.architecture = cli.architecture(parser, args)
    if args.exported is not None and args.strategy is not None:
        parser.error("--strategy applies to the Keras model, not to --exported files (their runtime runs them)")
    args.strategy = args.strategy or "auto"
    return args


def data_source(args):
    if args.dataset:
        split = args.split or training.default_tfds_splits(args.dataset, args.data_dir)[1]
        return training.tfds_source(
            args.dataset, split, args.data_dir, args.image_key, args.label_key, download=not args.no_download
        )
    return training.image_folder_source(args.image_folder)


def run_exported(args):
    """`run` for `--exported`: the file's probabilities on every image, once."""
    classifier = load_exported(args.exported)
    transform = cli.evaluation_transform_record(args, crop=not args.no_crop)
    if classifier.input_size is not None:
        height, width = classifier.input_size
        if height != width:
            raise ValueError(f"--exported {args.exported} takes {height} x {width} images; evaluation transforms are square")
        if args.image_size and args.image_size != height:
            raise ValueError(f"--image-size {args.image_size}, but --exported {args.exported} takes {height} x {width} images")
        transform = dataclasses.replace(transform, size=height)
    source = data_source(args)
    if source.num_classes != classifier.classes:
        raise ValueError(f"the data has {source.num_classes} classes, --exported {args.exported} {classifier.classes}")
    data = training.eval_dataset(
        training.make_strategy("none"),
        source,
        transform.size,
        args.batch_size,
        transform.crop_ratio,
        transform.interpolation,
    )
    # The metrics the Keras model is compiled with: the same top-1 / top-5, ties included.
    top1, top5 = training.metrics()
    for images, labels, weights in data:
        probabilities = classifier(images.numpy())
        for metric in (top1, top5):
            metric.update_state(labels, probabilities, sample_weight=weights)
    top1, top5 = float(top1.result()), float(top5.result())
    print(f"{args.exported}: top-1 {top1:.4f} top-5 {top5:.4f} ({source.num_examples} images)", flush=True)
    return top1, top5, source.num_examples


def run(args):
    """Returns `(top1, top5, number of images)`."""
    if args.exported is not None:
        return run_exported(args)
    strategy = training.make_strategy(args.strategy)
    architecture = args.architecture
    transform = cli.evaluation_transform_record(args, crop=not args.no_crop)
    size = transform.size
    classes = training.head_classes(architecture, args.weights)
    if classes is None:
        raise SystemExit(f"--weights {args.weights} has no classifier to evaluate")

    source = data_source(args)
    if source.num_classes != classes:
        raise SystemExit(f"the data has {source.num_classes} classes, the weights' classifier {classes}")
    data = training.eval_dataset(strategy, source, size, args.batch_size, transform.crop_ratio, transform.interpolation)
    with strategy.scope():
        model = training.build_model(architecture, classes, size, weights=args.weights)
        model.compile(loss=keras.losses.CategoricalCrossentropy(from_logits=True), weighted_metrics=training.metrics())
    training.prepare_for_strategy(model, strategy, size, classes)
    top1, top5 = training.evaluate(model, data)
    print(f"{args.weights}: top-1 {top1:.4f} top-5 {top5:.4f} ({source.num_examples} images)", flush=True)
    return top1, top5, source.num_examples


def main(argv=None):
    try:
        run(parse_args(argv))
    # ImportError: --dataset without tensorflow-datasets, whose message names the extra.
    except (ValueError, ImportError) as error:
        print(f"evaluate.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
