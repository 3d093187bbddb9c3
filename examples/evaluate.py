"""Top-1 / top-5 accuracy of any CvT variant and weights on a TFDS split or an image folder.

    python examples/evaluate.py --dataset imagenet2012 --split validation --model cvt13 --weights imagenet
    python examples/evaluate.py --image-folder flowers_val/ --weights runs/flowers/checkpoints/best.weights.h5

Images go through the original evaluation transform of the weights
(`keras_cvt.pretrained.transform_for`): with a pretrained name the checkpoint's own resolution,
crop and filter, with a `.weights.h5` path the 224 models' centre crop; `--image-size` and
`--no-crop` change them. The number of classes is read from the weights.
"""

import argparse
import sys

import keras

from keras_cvt import training
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
    parser.add_argument("--weights", default="imagenet", help="pretrained name or .weights.h5 path")
    parser.add_argument("--image-size", type=int, help="input size (default: the weights')")
    parser.add_argument("--no-crop", action="store_true", help="resize straight to --image-size (384-style)")
    parser.add_argument("--batch-size", type=int, default=64, help="per replica")
    parser.add_argument("--strategy", choices=training.STRATEGIES, default="auto")
    args = parser.parse_args(argv)
    args.architecture = cli.architecture(parser, args)
    return args


def run(args):
    """Returns `(top1, top5, number of images)`."""
    strategy = training.make_strategy(args.strategy)
    architecture = args.architecture
    transform = cli.evaluation_transform_record(args, crop=not args.no_crop)
    size = transform.size
    classes = training.head_classes(architecture, args.weights)
    if classes is None:
        raise SystemExit(f"--weights {args.weights} has no classifier to evaluate")

    if args.dataset:
        split = args.split or training.default_tfds_splits(args.dataset, args.data_dir)[1]
        source = training.tfds_source(
            args.dataset, split, args.data_dir, args.image_key, args.label_key, download=not args.no_download
        )
    else:
        source = training.image_folder_source(args.image_folder)
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
