"""Labelled image sources (TFDS, image folders, arrays) that each input pipeline reads a shard of."""

import dataclasses
import os
import re
import warnings

import numpy as np
import tensorflow as tf

from keras_cvt import images


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


def _tensorflow_datasets():
    """The `tensorflow_datasets` module: an optional install, needed only to read a TFDS dataset."""
    try:
        import tensorflow_datasets
    except ImportError as error:
        raise ImportError(
            "reading a TensorFlow Datasets dataset (--dataset) needs the tensorflow-datasets package: "
            "pip install keras-cvt[datasets] (or train on an image folder, --image-folder)"
        ) from error
    return tensorflow_datasets


def tfds_source(name, split, data_dir=None, image_key="image", label_key="label", download=True):
    """A TensorFlow Datasets image classification split (slices such as 'train[:90%]' work).

    Each input pipeline reads only its own contiguous part of the split (`tfds.even_splits`),
    so several workers never decode each other's images.
    """
    tfds = _tensorflow_datasets()
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
        decode=images.decode_image,
    )


def default_tfds_splits(name, data_dir=None):
    """`(train_split, validation_split)` of a TFDS dataset.

    Its `validation` split when it has one; otherwise the last 10% of `train` is held out
    ('train[:90%]', 'train[90%:]'), so the test split, if any, stays untouched.
    """
    tfds = _tensorflow_datasets()
    splits = tfds.builder(name, data_dir=data_dir).info.splits
    if "validation" in splits:
        return "train", "validation"
    return "train[:90%]", "train[90%:]"


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
SHOWN_BAD_IMAGES = 100


def list_image_folder(root):
    """`(paths, labels, class_names)` of a folder with one sub-folder of images per class.

    A class folder without images and a folder with a single class are errors: the first
    would add a class no image has, the second a classifier that is always right.
    """
    if not tf.io.gfile.isdir(root):
        raise ValueError(f"image folder not found: {root!r}")
    class_names = sorted(
        d.rstrip("/") for d in tf.io.gfile.listdir(root) if tf.io.gfile.isdir(os.path.join(root, d))
    )
    if not class_names:
        raise ValueError(f"image folder {root!r} has no class sub-folders")
    paths, labels, empty = [], [], []
    for label, class_name in enumerate(class_names):
        folder = os.path.join(root, class_name)
        files = sorted(f for f in tf.io.gfile.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            empty.append(folder)
        paths += [os.path.join(folder, f) for f in files]
        labels += [label] * len(files)
    if empty:
        raise ValueError(
            f"image folder {root!r}: class folder(s) without images ({', '.join(IMAGE_EXTENSIONS)}): "
            + ", ".join(map(repr, empty))
            + "; remove them or add images"
        )
    if len(class_names) < 2:
        raise ValueError(
            f"image folder {root!r} has a single class ({class_names[0]!r}): a classifier needs "
            "at least two class sub-folders"
        )
    return paths, labels, class_names


def find_unreadable_images(paths, load=images.load_image):
    """`[(index, path, reason)]` of the files `load` cannot read and decode.

    One parallel tf.data pass over all files (each decoded once; the elements that fail are
    dropped by `ignore_errors` and are the missing indices), then the reason of each failure,
    from decoding those files again (the first `SHOWN_BAD_IMAGES` only).
    """
    if not paths:
        return []
    readable = np.zeros(len(paths), bool)
    ds = tf.data.Dataset.from_tensor_slices(tf.constant(paths)).enumerate()
    # The decoded size is the output, so the decode cannot be pruned.
    ds = ds.map(
        lambda i, path: (i, tf.size(load(path))), num_parallel_calls=tf.data.AUTOTUNE, deterministic=False
    )
    for indices, sizes in ds.ignore_errors().batch(4096):
        readable[indices.numpy()[sizes.numpy() > 0]] = True
    bad = []
    for index in np.flatnonzero(~readable):
        reason = "(not decoded again)"
        if len(bad) < SHOWN_BAD_IMAGES:
            try:
                reason = "decodes to an empty image" if tf.size(load(paths[index])) == 0 else reason
            except (tf.errors.OpError, ValueError) as error:
                reason = _short_reason(getattr(error, "message", None) or str(error))
        bad.append((int(index), paths[index], reason))
    return bad


def _short_reason(message):
    # TensorFlow wraps an eager op's message as "{{function_node ...}} MESSAGE [Op:Name] name: ".
    message = re.sub(r"\{\{function_node [^}]*\}\}", "", message)
    return re.sub(r"\s*\[Op:\w+\].*", "", message.strip().splitlines()[0]).strip()


def _readable(root, paths, labels, class_names, skip_bad_images):
    """Indices of the readable `paths`; raises, or warns when `skip_bad_images`, naming the others."""
    bad = find_unreadable_images(paths)
    if not bad:
        return list(range(len(paths)))
    shown = "\n".join(f"  {path}: {reason}" for _, path, reason in bad[:SHOWN_BAD_IMAGES])
    more = f"\n  ... and {len(bad) - SHOWN_BAD_IMAGES} more" if len(bad) > SHOWN_BAD_IMAGES else ""
    summary = f"{len(bad)} of {len(paths)} images in image folder {root!r} cannot be decoded:\n{shown}{more}"
    if not skip_bad_images:
        raise ValueError(
            f"{summary}\nDelete or replace them, or skip them (skip_bad_images=True, --skip-bad-images)."
        )
    warnings.warn(f"{summary}\nSkipping them (skip_bad_images=True).", stacklevel=3)
    dropped = {index for index, _, _ in bad}
    keep = [i for i in range(len(paths)) if i not in dropped]
    lost = sorted(set(labels) - {labels[i] for i in keep})
    if lost:
        raise ValueError(
            f"image folder {root!r}: no readable image left in class folder(s) "
            + ", ".join(repr(os.path.join(root, class_names[label])) for label in lost)
        )
    return keep


def image_folder_source(root, subset=None, validation_fraction=0.1, seed=0, skip_bad_images=False):
    """Images in `root/<class name>/*.jpg|png|...`, classes in sorted order.

    Every file is decoded once before this returns (`find_unreadable_images`): files that
    cannot be read or decoded are listed, with their paths and why, in one ValueError, or
    skipped with a warning naming them when `skip_bad_images`.

    Args:
        subset: None for all images; `"training"` / `"validation"` for a split holding out
            `validation_fraction` of each class (the same one on every run and worker, whatever
            files are skipped); `"both"` for the tuple `(training, validation)`, checked in one
            pass.
    """
    if subset not in (None, "training", "validation", "both"):
        raise ValueError(f"`subset` must be None, 'training', 'validation' or 'both', got {subset!r}")
    if subset is not None and not 0.0 <= validation_fraction <= 1.0:
        raise ValueError(f"`validation_fraction` must be in [0, 1], got {validation_fraction!r}")
    paths, labels, class_names = list_image_folder(root)
    held_out = np.zeros(len(paths), bool)
    if subset is not None:
        rng = np.random.RandomState(seed)
        labels_array = np.asarray(labels)
        for label in range(len(class_names)):
            members = rng.permutation(np.flatnonzero(labels_array == label))
            held_out[members[: int(round(len(members) * validation_fraction))]] = True
    chosen = {"training": ~held_out, "validation": held_out}.get(subset, np.ones(len(paths), bool))
    indices = np.flatnonzero(chosen)
    readable = _readable(
        root, [paths[i] for i in indices], [labels[i] for i in indices], class_names, skip_bad_images
    )
    keep = indices[readable]

    def source(mask):
        kept = keep[mask[keep]]
        return _tensor_source(
            tf.constant([paths[i] for i in kept], tf.string),
            np.asarray([labels[i] for i in kept], np.int64),
            class_names,
            images.load_image,
        )

    if subset == "both":
        return source(~held_out), source(held_out)
    return source(chosen)


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
