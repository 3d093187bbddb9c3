"""Resolving and loading the `weights` argument of the model builders."""

import os

import h5py

# Where Keras 3's `.weights.h5` format keeps the classifier of our models: the functional
# model's only top-level Dense layer, keyed by its class name.
_HEAD_KERNEL = "layers/dense/vars/0"


def resolve(weights):
    """Returns the `.weights.h5` path that `weights` names, or None for random weights."""
    if weights is None:
        return None
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(
            f"`weights` must be None or a path to a .weights.h5 file, got {type(weights).__name__}"
        )
    path = os.fspath(weights)
    if not path.endswith(".weights.h5"):
        raise ValueError(
            "`weights` must be None or a path to a .weights.h5 file (convert original "
            f"checkpoints with `python -m weights_conversion`), got weights={path!r}"
        )
    if not os.path.isfile(path):
        raise ValueError(f"`weights` file not found: {path!r}")
    return path


def head_classes(path):
    """Number of classes of the classifier stored in a `.weights.h5` file, or None."""
    with h5py.File(path, "r") as f:
        kernel = f.get(_HEAD_KERNEL)
        return None if kernel is None else int(kernel.shape[-1])


def check_classes(path, classes):
    """Refuses a `classes` that the classifier in the weights file contradicts."""
    stored = head_classes(path)
    if stored is None:
        raise ValueError(
            f"`weights` file {path!r} has no classifier; build with include_top=False to use it"
        )
    if stored != classes:
        raise ValueError(
            f"`classes`={classes} contradicts the `weights` file {path!r}, whose classifier has "
            f"{stored} classes; pass classes={stored}, or include_top=False and add your own head"
        )


def load(model, path):
    """Loads a `.weights.h5` file, naming the file when it does not fit the model."""
    try:
        model.load_weights(path)
    except ValueError as error:
        raise ValueError(f"`weights` file {path!r} does not fit model {model.name!r}: {error}") from error
