"""Resolving and loading the `weights` argument of the model builders.

The pretrained cache holds, per checkpoint, the converted `.weights.h5` and beside it a record
(`<file>.json`) written after it: the file's size and SHA-256, the hub file it was converted
from, and the keras_cvt version. The file is used only while it matches its record; otherwise it
is downloaded and converted again, or, offline, refused with its path and what to delete.
"""

import contextlib
import json
import os
import re
import tempfile
import warnings

import h5py

from keras_cvt import _version, atomic, hub, pretrained
from keras_cvt.layers import ConvEmbedding, CvTBlock

# Where Keras 3's `.weights.h5` format keeps the classifier of our models: the functional
# model's only top-level Dense layer, keyed by its class name.
_HEAD_KERNEL = "layers/dense/vars/0"
_SUFFIX = ".weights.h5"
# Keras keys each top-level layer by its snake-cased class name, numbered from the second on.
_EMBEDDING = re.compile(r"conv_embedding(_\d+)?")
_BLOCK = re.compile(r"cv_t_block(_\d+)?")
# What h5py raises for a file whose structure it cannot follow (KeyError: an object that is
# listed but cannot be opened).
_DAMAGED_HDF5 = (OSError, RuntimeError, KeyError)
# Bumped when converted files change (layout, conversion): older cache entries are redone.
CACHE_FORMAT = 1
_EXPECTED = (
    "a Keras 3 .weights.h5 file of a keras_cvt model, written by `model.save_weights` or "
    "`python -m weights_conversion`"
)


def cache_dir():
    """Where converted pretrained weights are kept: `$KERAS_HOME/models/keras_cvt`."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, "models", "keras_cvt")


def cached_path(entry):
    """The converted file of a pretrained entry; the revision in the name keeps pins apart."""
    return os.path.join(cache_dir(), f"{entry.variant}_{entry.name}_{entry.revision[:12]}{_SUFFIX}")


def record_path(path):
    """The record beside a cached file: what it was converted from, and its SHA-256."""
    return path + ".json"


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

    Raises:
        ValueError: a name `variant` does not have, a path that is not a `.weights.h5` file
            or is unreadable, damaged or holds no CvT, or a damaged cache entry offline.
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
    # Opened now, so that a damaged file is refused before a model is built for it.
    with _open(path):
        pass
    return path


@contextlib.contextmanager
def _open(path):
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
                    "`python -m weights_conversion` first)"
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


def fetch(entry, progress=True):
    """The converted weights of a pretrained entry: from the cache, or downloaded into it.

    A cached file is used only if it matches its record (size, SHA-256, source); one that does
    not is downloaded and converted again, with a warning naming it.

    Raises:
        keras_cvt.hub.OfflineError: not cached and `HF_HUB_OFFLINE` is set.
        keras_cvt.hub.HubError: the download failed or did not verify.
        ValueError: the verified download does not convert (a wrong file at that revision), or
            the cached file fails verification and `HF_HUB_OFFLINE` forbids fetching it again.
    """
    path = cached_path(entry)
    problem = None
    if os.path.isfile(path):
        problem = verify_cached(entry, path)
        if problem is None:
            return path
        if hub.offline():
            raise ValueError(
                f"the cached {entry.variant} weights {entry.name!r} at {path} fail verification: "
                f"{problem}. HF_HUB_OFFLINE is set, so they cannot be downloaded again: delete "
                f"{path} and {record_path(path)}, then run again with network access. "
                + hub.manual_instructions(entry)
            )
        warnings.warn(
            f"the cached {entry.variant} weights {entry.name!r} at {path} fail verification "
            f"({problem}); downloading and converting them again",
            stacklevel=2,
        )
    elif hub.offline():
        raise hub.OfflineError(
            f"HF_HUB_OFFLINE is set and the {entry.variant} weights {entry.name!r} are not cached "
            f"at {path}, so {hub.describe(entry)} would have to be downloaded. "
            + hub.manual_instructions(entry)
        )
    try:
        _download_and_convert(entry, path, progress)
    except hub.HubError as error:
        if problem is None:
            raise
        raise type(error)(
            f"the cached file {path} fails verification ({problem}) and could not be fetched "
            f"again (it stays until a download succeeds, or delete it): {error}"
        ) from error
    return path


def _download_and_convert(entry, path, progress):
    os.makedirs(cache_dir(), exist_ok=True)
    # A private directory per call: concurrent processes never share a half-written download,
    # and whatever happens, removing it leaves only finished files in the cache.
    work_dir = tempfile.TemporaryDirectory(prefix=".download-", dir=cache_dir(), ignore_cleanup_errors=True)
    with work_dir as work:
        raw = os.path.join(work, entry.filename)
        source_sha256 = hub.download(entry, raw, progress=progress)
        # Imported here: weights_conversion imports keras_cvt's model code at its own import.
        from weights_conversion import convert

        with atomic.publish_file(path) as converted:
            try:
                convert(raw, converted, model=entry.variant)
            except ValueError as error:
                raise ValueError(
                    f"{hub.describe(entry)} was downloaded and verified, but does not convert to "
                    f"{entry.variant}: {error}"
                ) from error
    # After the file: a file without its record (a kill in between) is never trusted.
    write_record(entry, path, source_sha256)


def _identity(entry):
    return {
        "format": CACHE_FORMAT,
        "variant": entry.variant,
        "repo": entry.repo,
        "revision": entry.revision,
        "filename": entry.filename,
    }


def write_record(entry, path, source_sha256):
    """Records the file at `path` as the converted weights of `entry`, from the hub file whose
    SHA-256 is `source_sha256`; the cache trusts the file while it matches this record.

    Also the way to install a file converted by hand (from a `tf_model.h5` downloaded
    elsewhere) at `cached_path(entry)`.
    """
    record = {
        **_identity(entry),
        "source_sha256": source_sha256,
        "size": os.path.getsize(path),
        "sha256": atomic.sha256_file(path),
        "keras_cvt": _version.__version__,
    }
    atomic.write_bytes(record_path(path), (json.dumps(record, indent=2) + "\n").encode())


def verify_cached(entry, path):
    """None if the cached file at `path` matches its record, else what is wrong with it."""
    record_file = record_path(path)
    try:
        with open(record_file, encoding="utf-8") as f:
            record = json.load(f)
    except FileNotFoundError:
        return f"its record {record_file} is missing"
    except (OSError, ValueError) as error:
        return f"its record {record_file} is unreadable ({error})"
    if not isinstance(record, dict):
        return f"its record {record_file} is not a JSON object"
    different = [key for key, value in _identity(entry).items() if record.get(key) != value]
    if different:
        return f"its record {record_file} is for another file or format ({', '.join(different)} differ)"
    size = os.path.getsize(path)
    if size != record.get("size"):
        return f"it has {size} bytes, its record says {record.get('size')}"
    actual = atomic.sha256_file(path)
    if actual != record.get("sha256"):
        return (
            f"its SHA-256 is {actual}, its record says {record.get('sha256')}: it changed after "
            "it was written"
        )
    return None


def head_classes(path):
    """Number of classes of the classifier stored in a `.weights.h5` file, or None."""
    with _open(path) as f:
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
    with _open(path) as f:
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
