"""Top-5 ImageNet labels for images, with any CvT variant and weights.

    python examples/classify.py photo.jpg [more.png ...] [--model cvt13] [--weights imagenet]

`--weights` is a pretrained name (see `keras_cvt.available_weights()`; downloaded and cached
on first use) or a `.weights.h5` path, whose evaluation transform is then `--size` with the
224-style centre crop unless `--no-crop`.
"""

import argparse
import sys

import numpy as np

import keras_cvt
from keras_cvt import images, pretrained, transforms
from keras_cvt.variants import BUILDERS



def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", help="image files (JPEG, PNG, BMP, GIF)")
    parser.add_argument("--model", choices=sorted(BUILDERS), default="cvt13")
    parser.add_argument("--weights", default="imagenet", help="pretrained name or .weights.h5 path")
    parser.add_argument("--size", type=int, default=224, help="input size for a weights path")
    parser.add_argument("--no-crop", action="store_true", help="resize straight to --size (384-style)")
    parser.add_argument("--top", type=int, default=5)
    args = parser.parse_args(argv)

    if args.weights.endswith(".weights.h5"):
        transform = transforms.evaluation_transform(args.size, None if args.no_crop else 0.875)
    else:
        entry = pretrained.lookup(args.model, args.weights)
        transform = transforms.evaluation_transform(entry.resolution, entry.crop_ratio)
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
