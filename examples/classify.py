"""Top-5 ImageNet labels for images, with any CvT variant and weights.

    python examples/classify.py photo.jpg [more.png ...] [--model cvt13] [--weights imagenet]

`--weights` is a pretrained name (see `keras_cvt.available_weights()`; downloaded and cached
on first use) or a `.weights.h5` path. Images go through the weights' evaluation transform
(`keras_cvt.pretrained.transform_for`: the checkpoint's own, or the 224 centre crop for a
file); `--size` and `--no-crop` change it.
"""

import argparse
import sys

import numpy as np

import keras_cvt
from keras_cvt import images, pretrained, transforms
from keras_cvt.variants import BUILDERS


def transform_options(args):
    """What `--size` and `--no-crop` change in the weights' evaluation transform."""
    return {**({"size": args.size} if args.size else {}), **({"crop_ratio": None} if args.no_crop else {})}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", help="image files (JPEG, PNG, BMP, GIF)")
    parser.add_argument("--model", choices=sorted(BUILDERS), default="cvt13")
    parser.add_argument("--weights", default="imagenet", help="pretrained name or .weights.h5 path")
    parser.add_argument("--size", type=int, help="input size (default: the weights')")
    parser.add_argument("--no-crop", action="store_true", help="resize straight to --size (384-style)")
    parser.add_argument("--top", type=int, default=5)
    args = parser.parse_args(argv)

    transform = transforms.from_record(pretrained.transform_for(args.model, args.weights, **transform_options(args)))
    model = BUILDERS[args.model](weights=args.weights, input_shape=(None, None, 3))
    batch = np.stack([transform(images.load_image(path)).numpy() for path in args.images])
    predictions = keras_cvt.decode_predictions(model.predict(batch, verbose=0), top=args.top)
    for path, top in zip(args.images, predictions):
        print(path)
        for _, name, score in top:
            print(f"  {score:7.2%}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
