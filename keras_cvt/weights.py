"""Resolving and loading the `weights` argument of the model builders."""

import os
import shutil
import tempfile

import h5py

from keras_cvt import hub, pretrained

# Where Keras 3's `.weights.h5` format keeps the classifier of our models: the functional
# model's only top-level Dense layer, keyed by its class name.
_HEAD_KERNEL = "layers/dense/vars/0"
_SUFFIX = ".weights.h5"


def cache_dir():
    """Where converted pretrained weights are kept: `$KERAS_HOME/models/keras_cvt`."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, "models", "keras_cvt")


def cached_path(entry):
    """The converted file of a pretrained entry; the revision in the name keeps pins apart."""
    return os.path.join(cache_dir(), f"{entry.variant}_{entry.name}_{entry.revision[:12]}{_SUFFIX}")


def is_pretrained_name(weights):
    """Whether `weights` names a pretrained checkpoint rather than giving a file path."""
    # A path says so with a directory or an .h5 suffix; anything else is taken for a name, so
    # that a typo of one is reported against the list of names rather than as a missing file.
    return isinstance(weights, str) and not weights.endswith(".h5") and not {"/", os.sep} & set(weights)


def pretrained_entry(weights, variant=None):
    """The `keras_cvt.pretrained` entry that `weights` names for `variant`, or None for a path.

    Raises ValueError for a name that `variant` does not have (listing those it has), and for
    any name when `variant` is None: the generic `CvT` builder has no pretrained weights.
    """
    if weights is None or not is_pretrained_name(weights):
        return None
    if variant is None:
        raise ValueError(
            f"`weights`={weights!r} is neither None nor a path to a .weights.h5 file; pretrained "
            "names such as 'imagenet' belong to the variant builders CvT13, CvT21 and CvTW24, "
            "not to the generic CvT builder"
        )
    return pretrained.lookup(variant, weights)


def resolve(weights, variant=None):
    """Returns the `.weights.h5` path that `weights` names, or None for random weights.

    Args:
        weights: None, a path to a `.weights.h5` file, or (with `variant`) the name of one of
            `keras_cvt.available_weights(variant)`, downloaded and converted on first use.
        variant: `"cvt13"`, `"cvt21"`, `"cvtw24"`, or None for a custom architecture.
    """
    entry = pretrained_entry(weights, variant)
    if entry is not None:
        return fetch(entry)
    if weights is None:
        return None
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(
            f"`weights` must be None or a path to a .weights.h5 file, got {type(weights).__name__}"
        )
    path = os.fspath(weights)
    if not path.endswith(_SUFFIX):
        raise ValueError(
            "`weights` must be None or a path to a .weights.h5 file (convert original "
            f"checkpoints with `python -m weights_conversion`), got weights={path!r}"
        )
    if not os.path.isfile(path):
        raise ValueError(f"`weights` file not found: {path!r}")
    return path


def fetch(entry, progress=True):
    """The converted weights of a pretrained entry: from the cache, or downloaded into it.

    Raises:
        keras_cvt.hub.OfflineError: not cached and `HF_HUB_OFFLINE` is set.
        keras_cvt.hub.HubError: the download failed or did not verify.
        ValueError: the verified download does not convert (a wrong file at that revision).
    """
    path = cached_path(entry)
    if os.path.isfile(path):
        return path
    if hub.offline():
        raise hub.OfflineError(
            f"HF_HUB_OFFLINE is set and the {entry.variant} weights {entry.name!r} are not cached "
            f"at {path}, so {hub.describe(entry)} would have to be downloaded. "
            + hub.manual_instructions(entry)
            + f" (Or save the converted file as {path}, and weights={entry.name!r} will find it.)"
        )
    os.makedirs(cache_dir(), exist_ok=True)
    # A private directory per call: concurrent processes never share a half-written download,
    # and whatever happens, removing it leaves only finished files in the cache.
    work = tempfile.mkdtemp(prefix=".download-", dir=cache_dir())
    try:
        raw = os.path.join(work, entry.filename)
        hub.download(entry, raw, progress=progress)
        # Imported here: weights_conversion imports keras_cvt's model code at its own import.
        from weights_conversion import convert

        try:
            convert(raw, path, model=entry.variant)
        except ValueError as error:
            raise ValueError(
                f"{hub.describe(entry)} was downloaded and verified, but does not convert to "
                f"{entry.variant}: {error}"
            ) from error
    finally:
        shutil.rmtree(work, ignore_errors=True)
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
