"""Labelled image sources (TFDS, image folders, arrays) that each input pipeline reads a shard of."""

import dataclasses
import os

import numpy as np
import tensorflow as tf

from keras_cvt import transforms


@dataclasses.dataclass
class ImageSource:
    """Labelled images, read in shards.

    Attributes:
        num_examples: number of images (of all shards together).
        num_classes: number of classes; labels are integers in [0, num_classes).
        class_names: the classes' names, or None.
        load: `load(shard_index, num_shards, shuffle)` -> dataset of `(encoded_or_decoded,
            label)`; `shuffle` lets it shuffle files (training), False keeps their order.
        decode: turns the first element into an RGB uint8 `(height, width, 3)` image; applied
            after shuffling, in the parallel map, so that shuffle buffers hold small encodings.
    """

    num_examples: int
    num_classes: int
    class_names: list
    load: object
    decode: object


def tfds_source(name, split, data_dir=None, image_key="image", label_key="label", download=True):
    """A TensorFlow Datasets image classification split (slices such as 'train[:90%]' work).

    Each input pipeline reads only its own contiguous part of the split (`tfds.even_splits`),
    so several workers never decode each other's images.
    """
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir)
    if download:
        builder.download_and_prepare()
    label_feature = builder.info.features[label_key]
    decoders = {image_key: tfds.decode.SkipDecoding()}

    def read(split_or_part, shuffle_files):
        return builder.as_dataset(split=split_or_part, decoders=decoders, shuffle_files=shuffle_files)

    num_examples = int(read(split, False).cardinality())
    if num_examples < 0:
        num_examples = builder.info.splits[split].num_examples

    def load(shard_index, num_shards, shuffle):
        part = split if num_shards == 1 else tfds.even_splits(split, num_shards)[shard_index]
        ds = read(part, shuffle)
        return ds.map(lambda ex: (ex[image_key], ex[label_key]), num_parallel_calls=tf.data.AUTOTUNE)

    return ImageSource(
        num_examples=num_examples,
        num_classes=label_feature.num_classes,
        class_names=list(label_feature.names),
        load=load,
        decode=transforms.decode_image,
    )


def default_tfds_splits(name, data_dir=None):
    """`(train_split, validation_split)` of a TFDS dataset.

    Its `validation` split when it has one; otherwise the last 10% of `train` is held out
    ('train[:90%]', 'train[90%:]'), so the test split, if any, stays untouched.
    """
    import tensorflow_datasets as tfds

    splits = tfds.builder(name, data_dir=data_dir).info.splits
    if "validation" in splits:
        return "train", "validation"
    return "train[:90%]", "train[90%:]"


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def list_image_folder(root):
    """`(paths, labels, class_names)` of a folder with one sub-folder of images per class."""
    if not tf.io.gfile.isdir(root):
        raise ValueError(f"image folder not found: {root!r}")
    class_names = sorted(
        d.rstrip("/") for d in tf.io.gfile.listdir(root) if tf.io.gfile.isdir(os.path.join(root, d))
    )
    if not class_names:
        raise ValueError(f"image folder {root!r} has no class sub-folders")
    paths, labels = [], []
    for label, class_name in enumerate(class_names):
        folder = os.path.join(root, class_name)
        files = sorted(f for f in tf.io.gfile.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
        paths += [os.path.join(folder, f) for f in files]
        labels += [label] * len(files)
    if not paths:
        raise ValueError(f"image folder {root!r} has no images ({', '.join(IMAGE_EXTENSIONS)})")
    return paths, labels, class_names


def image_folder_source(root, subset=None, validation_fraction=0.1, seed=0):
    """Images in `root/<class name>/*.jpg|png|...`, classes in sorted order.

    Args:
        subset: None for all images, or `"training"` / `"validation"` for a split held out
            with `validation_fraction` of each class (the same one on every run and worker).
    """
    paths, labels, class_names = list_image_folder(root)
    if subset is not None:
        if subset not in ("training", "validation"):
            raise ValueError(f"`subset` must be None, 'training' or 'validation', got {subset!r}")
        rng = np.random.RandomState(seed)
        keep = []
        labels_array = np.asarray(labels)
        for label in range(len(class_names)):
            members = rng.permutation(np.flatnonzero(labels_array == label))
            held_out = int(round(len(members) * validation_fraction))
            keep += list(members[:held_out] if subset == "validation" else members[held_out:])
        keep = sorted(keep)
        paths = [paths[i] for i in keep]
        labels = [labels[i] for i in keep]
    return _tensor_source(
        tf.constant(paths), np.asarray(labels, np.int64), class_names, transforms.load_image
    )


def array_source(images, labels, num_classes=None, class_names=None):
    """In-memory uint8 images `(n, height, width, 3)` with integer labels."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"`images` must be (n, height, width, 3), got shape {images.shape}")
    labels = np.asarray(labels, np.int64)
    num_classes = num_classes or int(labels.max()) + 1
    return _tensor_source(images, labels, class_names or [str(i) for i in range(num_classes)], tf.identity)


def _tensor_source(items, labels, class_names, decode):
    # A fixed permutation spreads every class over all shards.
    order = np.random.RandomState(0).permutation(len(labels))
    items = tf.gather(items, order)
    labels = labels[order]

    def load(shard_index, num_shards, shuffle):
        ds = tf.data.Dataset.from_tensor_slices((items, labels))
        return ds.shard(num_shards, shard_index) if num_shards > 1 else ds

    return ImageSource(len(labels), len(class_names), list(class_names), load, decode)
