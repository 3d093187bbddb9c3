"""Weights files (`.weights.h5`): telling a path from a pretrained name, checking that a file is
CvT weights of the model's architecture before a model is built or loaded from it."""

import contextlib
import os
import re

import h5py

from keras_cvt import architectures, arguments, pretrained
from keras_cvt.layers import ConvEmbedding, CvTBlock

# Where Keras 3's `.weights.h5` format keeps the classifier of our models: the functional
# model's only top-level Dense layer, keyed by its class name.
_HEAD_KERNEL = "layers/dense/vars/0"
SUFFIX = ".weights.h5"
# Keras keys each top-level layer by its snake-cased class name, numbered from the second on.
_EMBEDDING = re.compile(r"conv_embedding(_\d+)?")
_BLOCK = re.compile(r"cv_t_block(_\d+)?")
# What h5py raises for a file whose structure it cannot follow (KeyError: an object that is
# listed but cannot be opened).
_DAMAGED_HDF5 = (OSError, RuntimeError, KeyError)
_EXPECTED = (
    "a Keras 3 .weights.h5 file of a keras_cvt model, written by `model.save_weights` or "
    "`python -m keras_cvt.conversion`"
)


def resolve_path(weights):
    """The `.weights.h5` path that `weights` gives (None for random weights), opened once so
    that a damaged file is refused before a model is built for it.

    Raises:
        TypeError: `weights` is neither None nor a path.
        ValueError: a path that is not a `.weights.h5` file, or is unreadable, damaged or holds
            no CvT.
    """
    if weights is None:
        return None
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(
            f"`weights` must be None or a path to a .weights.h5 file, got {type(weights).__name__}"
        )
    if pretrained.is_pretrained_name(weights):
        builders = [variant.builder for variant in architectures.VARIANTS.values()]
        raise ValueError(
            f"`weights`={weights!r} is neither None nor a path to a .weights.h5 file; pretrained "
            f"names such as 'imagenet' belong to the variant builders {', '.join(builders[:-1])} "
            f"and {builders[-1]}, not to the generic CvT builder"
        )
    path = os.fspath(weights)
    if not path.endswith(SUFFIX):
        raise ValueError(
            "`weights` must be None or a path to a .weights.h5 file (convert original "
            f"checkpoints with `python -m keras_cvt.conversion`), got weights={path!r}"
        )
    with open_weights(path):
        pass
    return path


@contextlib.contextmanager
def open_weights(path):
    """The open HDF5 file at `path`, or ValueError naming it when it is no CvT weights file."""
    if not os.path.isfile(path):
        raise ValueError(f"`weights` file not found: {path!r}")
    try:
        file = h5py.File(path, "r")
    except OSError as error:
        raise _unreadable(path, error) from error
    with file:
        try:
            top = file.get("layers")
            names = list(top) if isinstance(top, h5py.Group) else []
            if not any(_EMBEDDING.fullmatch(name) for name in names):
                raise ValueError(
                    f"`weights` file {path!r} is HDF5 but holds no CvT token embedding layers: "
                    f"expected {_EXPECTED} (a HuggingFace tf_model.h5 or Keras 2 .h5 file needs "
                    "`python -m keras_cvt.conversion` first)"
                )
            yield file
        except _DAMAGED_HDF5 as error:
            raise _unreadable(path, error) from error


def _unreadable(path, error):
    # h5py says why: no signature (empty, or not HDF5), truncated (bytes there vs. expected), a
    # bad node signature (overwritten structure)...
    return ValueError(
        f"`weights` file {path!r} ({os.path.getsize(path)} bytes) cannot be read: {error}. "
        f"Expected {_EXPECTED}; this one is damaged, truncated or another kind of file: write "
        "it again"
    )


def head_classes(path):
    """Number of classes of the classifier stored in a `.weights.h5` file, or None."""
    with open_weights(path) as f:
        kernel = f.get(_HEAD_KERNEL)
        return None if kernel is None else int(kernel.shape[-1])


def head_weights(path):
    """The classifier's `[kernel, bias]` stored in a `.weights.h5` file, or None without one:
    what a model with a classifier of its own (keras-hub's) loads beside the backbone."""
    with open_weights(path) as f:
        kernel, bias = f.get(_HEAD_KERNEL), f.get(_HEAD_KERNEL[:-1] + "1")
        return None if kernel is None or bias is None else [kernel[()], bias[()]]


def check_classes(path, classes):
    """The classifier width of a model loading the file at `path`: the file's when `classes`
    was left at its default, else `classes`, refused when the file's classifier contradicts it."""
    return arguments.classes_for(classes, head_classes(path), path)


def load(model, path):
    """Loads a `.weights.h5` file, naming the file when it does not fit the model."""
    with open_weights(path) as f:
        _check_architecture(f, path, model)
    try:
        model.load_weights(path)
    except ValueError as error:
        raise ValueError(f"`weights` file {path!r} does not fit model {model.name!r}: {error}") from error
    except _DAMAGED_HDF5 as error:
        raise _unreadable(path, error) from error


def _check_architecture(file, path, model):
    """Refuses a file whose stage widths or number of blocks differ from `model`'s.

    Keras refuses a file that lacks a layer of the model or holds another shape, but loads one
    with more blocks than the model without a word, leaving a different network.
    """
    embeddings = sorted(
        (int(match.group(1)[1:] if match.group(1) else 0), name)
        for name in file["layers"]
        if (match := _EMBEDDING.fullmatch(name))
    )
    gammas = [file.get(f"layers/{name}/norm/vars/0") for _, name in embeddings]
    stored = (
        tuple(None if gamma is None else int(gamma.shape[0]) for gamma in gammas),
        sum(1 for name in file["layers"] if _BLOCK.fullmatch(name)),
    )
    built = (
        tuple(layer.embed_dim for layer in model.layers if isinstance(layer, ConvEmbedding)),
        sum(1 for layer in model.layers if isinstance(layer, CvTBlock)),
    )
    if stored != built:
        raise ValueError(
            f"`weights` file {path!r} holds a CvT with stage widths {stored[0]} and {stored[1]} "
            f"transformer blocks, but model {model.name!r} has stage widths {built[0]} and "
            f"{built[1]} blocks: the file was saved from another architecture; build the model "
            "it was saved from"
        )
