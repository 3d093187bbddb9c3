"""Calibration images for the int8 exports (`keras_cvt.export.int8`): pixels `[n, size, size,
3]`, RGB in [0, 255], each image through an evaluation transform, from one of three sources:

- a folder of images (searched recursively): a few hundred like those the model will see;
- `"photos"`: the three photos shipped with keras_cvt (`keras_cvt/data/photos`: a cat, a cup
  of coffee, a rocket), enough to try an int8 export, too few to keep its accuracy;
- `"tfds:NAME"` or `"tfds:NAME@SPLIT"`: a TensorFlow Datasets dataset (its `train` split
  unless named; NAME as `tfds.builder` takes it, with `/config` and `:version`), read with
  `tensorflow_datasets` (the `int8` extra) from `data_dir` or `TFDS_DATA_DIR`, prepared there
  first (downloaded) where it is not yet.

Each image's size is read from its header and refused above MAX_CALIBRATION_PIXELS before it
is decoded; every refusal names the image.
"""

import importlib.resources
import os

import numpy as np
import tensorflow as tf

from keras_cvt import images
from keras_cvt.pretrained import DEFAULT_TRANSFORM
from keras_cvt.transforms import evaluation_transform

DEFAULT_CALIBRATION_SIZE = 300  # NNCF's default subset
# At 224 x 224, 2,000 images are 1.2 GB of float32 pixels: calibration needs far fewer.
MAX_CALIBRATION_SIZE = 2000
# Each calibration image's decoded size is bounded as the SavedModel bounds what it serves
# (height x width, read from the file's header before it is decoded).
MAX_CALIBRATION_PIXELS = 50_000_000
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
# The source that names the photos shipped in the package, and where they are in it.
PHOTOS = "photos"
PHOTOS_FOLDER = "data/photos"
TFDS_PREFIX = "tfds:"
DEFAULT_TFDS_SPLIT = "train"
SOURCES = f"a folder of images, {PHOTOS!r} (the photos shipped with keras_cvt) or '{TFDS_PREFIX}NAME[@SPLIT]'"


def check_calibration_size(count):
    """Raises ValueError unless `count` is an integer in [1, MAX_CALIBRATION_SIZE]."""
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or not 1 <= count <= MAX_CALIBRATION_SIZE:
        raise ValueError(
            f"`calibration_size` must be an integer from 1 to {MAX_CALIBRATION_SIZE}, got {count!r}"
        )
    return int(count)


def list_calibration_images(folder):
    """The image files under `folder` (and its sub-folders), sorted; ValueError if none."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise ValueError(f"calibration folder not found (or not a folder): {folder!r}")
    paths = sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(folder)
        for name in names
        if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")
    )
    if not paths:
        raise ValueError(f"calibration folder {folder!r} has no images ({', '.join(IMAGE_EXTENSIONS)})")
    return paths


def shipped_photos():
    """The photos shipped with keras_cvt (`PHOTOS`), as package resources, sorted by name."""
    folder = importlib.resources.files("keras_cvt").joinpath(PHOTOS_FOLDER)
    return sorted((f for f in folder.iterdir() if f.name.lower().endswith(IMAGE_EXTENSIONS)), key=lambda f: f.name)


def calibration_pixels(
    source,
    size=DEFAULT_TRANSFORM.size,
    crop_ratio=DEFAULT_TRANSFORM.crop_ratio,
    count=DEFAULT_CALIBRATION_SIZE,
    seed=0,
    interpolation=DEFAULT_TRANSFORM.interpolation,
    data_dir=None,
):
    """Calibration pixels from `source`: float32 `[n, size, size, 3]`, RGB in [0, 255], each
    image through `evaluation_transform(size, crop_ratio, interpolation)` (your checkpoint's:
    the fields of `keras_cvt.pretrained.transform_for(variant, weights)`).

    Args:
        source: a folder of images, `PHOTOS` or `"tfds:NAME[@SPLIT]"` (see the module
            docstring). A folder called `photos` is `"./photos"`.
        count: how many images, at most: a folder (or the photos) with more gives `count` drawn
            at random (by `seed`), so that a folder sorted by class gives every class its share;
            a TFDS split gives its first `count` (TFDS shuffles a dataset as it prepares it).
        data_dir: where TFDS datasets are (default: `TFDS_DATA_DIR`, else TFDS's default).

    Raises:
        TypeError: `source` is not a string or a path.
        ValueError: `count` not in [1, MAX_CALIBRATION_SIZE]; a missing folder, a folder
            without images, `"photos"` where a folder `photos` is also here; an unknown
            dataset or split, a split of no examples, a dataset without 8-bit images; an image larger
            than MAX_CALIBRATION_PIXELS (by its header, before decoding) or one that does not
            decode, named.
        ImportError: a TFDS source without tensorflow-datasets installed.
    """
    count = check_calibration_size(count)
    transform = evaluation_transform(size, crop_ratio, interpolation)
    return np.stack([_transformed(name, read, transform) for name, read in _images(source, count, seed, data_dir)])


def _images(source, count, seed, data_dir):
    """`[(name, read)]` of at most `count` images of `source`: `read()` gives the encoded image."""
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"the calibration source must be {SOURCES}, got {type(source).__name__} {source!r}")
    if isinstance(source, str) and source.startswith(TFDS_PREFIX):
        return _tfds_images(source, count, data_dir)
    if source == PHOTOS:
        if os.path.isdir(PHOTOS):
            raise ValueError(
                f"the calibration source {PHOTOS!r} names the photos shipped with keras_cvt, and there is "
                f"also a folder {PHOTOS!r} here: pass './{PHOTOS}' for the folder"
            )
        files = [(os.fspath(f), f.read_bytes) for f in shipped_photos()]
    else:
        files = [(path, lambda path=path: tf.io.read_file(path)) for path in list_calibration_images(source)]
    if len(files) > count:
        chosen = np.random.default_rng(seed).choice(len(files), count, replace=False)
        files = [files[i] for i in sorted(chosen)]
    return files


def _transformed(name, read, transform):
    """One image (`read()` gives it encoded) through `transform`, its size checked from its
    header first."""
    try:
        encoded = read()
        height, width = (int(d) for d in images.inspect_encoded_image(encoded)[0].numpy())
        if height * width > MAX_CALIBRATION_PIXELS:
            raise ValueError(
                f"calibration image {name!r} is {height} x {width} pixels, more than {MAX_CALIBRATION_PIXELS:,}"
            )
        return transform(images.decode_image(encoded)).numpy()
    except tf.errors.OpError as error:
        reason = error.message.strip().splitlines()[0] if error.message else type(error).__name__
        raise ValueError(f"calibration image {name!r} does not decode as an image: {reason}") from None


def _tensorflow_datasets():
    """The `tensorflow_datasets` module: an optional install, needed only for a TFDS source."""
    try:
        import tensorflow_datasets
    except ImportError as error:
        raise ImportError(
            f"calibrating on a TensorFlow Datasets dataset ({TFDS_PREFIX}NAME) needs the tensorflow-datasets "
            "package: pip install keras-cvt[int8] (or calibrate on a folder of images)"
        ) from error
    return tensorflow_datasets


def _tfds_images(source, count, data_dir):
    name, at, split = source[len(TFDS_PREFIX) :].partition("@")
    if not name or (at and not split):
        raise ValueError(f"the calibration source {source!r} must be '{TFDS_PREFIX}NAME' or '{TFDS_PREFIX}NAME@SPLIT'")
    split = split or DEFAULT_TFDS_SPLIT
    tfds = _tensorflow_datasets()
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except (ValueError, AssertionError) as error:  # no such dataset (or config, or version)
        raise ValueError(f"calibration source {source!r}: {_first_line(error)}") from None
    key = _image_feature(builder.info.features, tfds, source)
    if not builder.is_prepared():
        builder.download_and_prepare()
    try:
        dataset = builder.as_dataset(split=split, decoders={key: tfds.decode.SkipDecoding()}, shuffle_files=False)
    except ValueError as error:  # an unknown split, a slice of nothing (TFDS writes no empty split)
        raise ValueError(f"calibration source {source!r}: {_first_line(error)}") from None
    return [(f"{source}, example {i}", lambda e=example[key]: e) for i, example in enumerate(dataset.take(count))]


def _image_feature(features, tfds, source):
    """The name of the 8-bit image feature of a TFDS dataset's `features`: `image`, or its
    only image feature."""
    found = {key: f for key, f in features.items() if isinstance(f, tfds.features.Image)}
    if "image" in found:
        found = {"image": found["image"]}
    if len(found) != 1:
        raise ValueError(
            f"calibration source {source!r}: "
            + (f"several image features ({', '.join(sorted(found))}), none called 'image'" if found else
               f"no image feature (its features: {', '.join(sorted(features.keys()))})")
        )
    (key, feature), = found.items()
    if feature.np_dtype != np.uint8:
        raise ValueError(
            f"calibration source {source!r}: its image feature {key!r} holds {feature.np_dtype} images; "
            "calibration takes 8-bit (uint8) images"
        )
    return key


def _first_line(error):
    """TFDS's messages go on with lists (every dataset it knows): their first line."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
