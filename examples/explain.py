"""Where CvT looks: a class activation map or attention rollout over each photo, with its top-5 labels.

    python examples/explain.py examples/images/*.jpg --model cvt13 --weights imagenet --output explained/

Writes `<image name>.png` per image (the heat map over the image as the model saw it, after
the weights' evaluation transform, titled with the top-5 labels and scores) and `grid.png`
with all of them. `--weights` is a pretrained name, `hf://owner/repo` or a `.weights.h5`
file (offline: a converted checkpoint). `--method` picks the map: `attention-gradient`
(the default), `hirescam` or `grad-cam` (class activation maps of the top class), `rollout`
(the class token's attention rollout to the pixels) or `attention` (the class token's
attention in the last block). See docs/explain.md.
"""

import argparse
import pathlib
import sys
import time

import numpy as np

import keras_cvt
from keras_cvt import explain, images, plots, pretrained, transforms
from keras_cvt.variants import BUILDERS

METHODS = (*explain.CAM_METHODS, "rollout", "attention")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", type=pathlib.Path, help="image files (JPEG, PNG, BMP, GIF)")
    parser.add_argument("--model", choices=sorted(BUILDERS), default="cvt13")
    parser.add_argument("--weights", default="imagenet", help="pretrained name, hf://owner/repo or .weights.h5 path")
    parser.add_argument("--output", type=pathlib.Path, required=True, help="folder for the PNG files")
    parser.add_argument("--method", choices=METHODS, default=explain.CAM_METHODS[0])
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    missing = [str(path) for path in args.images if not path.is_file()]
    if missing:
        parser.error(f"image file not found: {', '.join(missing)}")
    if args.output.exists() and not args.output.is_dir():
        parser.error(f"--output {args.output} exists and is not a folder")
    return args


def heat_maps(found, method, image_size):
    if method in explain.CAM_METHODS:
        return found.cam
    if method == "rollout":
        maps = found.rollout.image
    else:
        last = list(found.attention.values())[-1]
        maps = explain.query_map(last, "cls", image_size)
    peak = maps.reshape((len(maps), -1)).max(axis=1)
    return maps / np.where(peak > 0, peak, 1.0)[:, None, None]


def titles(outputs, names):
    """Each image's name and its top-5 labels and scores (ImageNet names for 1000 classes)."""
    top = np.argsort(-outputs, axis=1, kind="stable")[:, :5]
    if outputs.shape[1] == 1000:
        labels = [[name for _, name, _ in row] for row in keras_cvt.decode_predictions(outputs, top=5)]
    else:
        labels = [[f"class {c}" for c in row] for row in top]
    return [
        "\n".join([name] + [f"{score:6.1%}  {label}" for label, score in zip(row, outputs[i, top[i]])])
        for i, (name, row) in enumerate(zip(names, labels))
    ]


def main(argv=None):
    args = parse_args(argv)
    start = time.monotonic()
    print(f"Loading {args.model} with weights {args.weights}", flush=True)
    model = BUILDERS[args.model](weights=args.weights, input_shape=(None, None, 3))
    transform = transforms.from_record(pretrained.transform_for(args.model, args.weights))
    explainer = explain.Explainer(model)
    args.output.mkdir(parents=True, exist_ok=True)
    shown, heats, captions = [], [], []
    for first in range(0, len(args.images), args.batch_size):
        paths = args.images[first : first + args.batch_size]
        batch = np.stack([transform(images.load_image(str(path))).numpy() for path in paths])
        found = explainer(batch, cam=args.method if args.method in explain.CAM_METHODS else None)
        maps = heat_maps(found, args.method, batch.shape[1:3])
        for offset, (path, image, heat, title) in enumerate(
            zip(paths, batch, maps, titles(found.outputs, [p.name for p in paths]))
        ):
            target = args.output / f"{path.stem}.png"
            plots.save(plots.overlay(image, heat, title), target)
            shown.append(image), heats.append(heat), captions.append(title)
            top = title.splitlines()[1].strip()
            print(f"[{first + offset + 1}/{len(args.images)} {time.monotonic() - start:4.0f}s] {path} -> {target} ({top})", flush=True)
    grid = plots.save(plots.overlay_grid(shown, heats, captions), args.output / "grid.png")
    print(f"{args.method} of {len(shown)} images: {args.output}/*.png, all in {grid}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
