"""The pretrained cache: each checkpoint downloaded once, verified, converted, and kept.

The cache holds, per checkpoint, the converted `.weights.h5` and beside it a record
(`<file>.json`) written after it: the file's size and SHA-256, the hub file it was converted
from, and the keras_cvt version. The file is used only while it matches its record; otherwise it
is downloaded and converted again, or, offline, refused with its path and what to delete.
"""

import json
import os
import tempfile
import warnings

import weights_conversion
from keras_cvt import _version, atomic, hub, pretrained, weights_file

# Bumped when converted files change (layout, conversion): older cache entries are redone.
CACHE_FORMAT = 1


def cache_dir():
    """Where converted pretrained weights are kept: `$KERAS_HOME/models/keras_cvt`."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, "models", "keras_cvt")


def cached_path(entry):
    """The converted file of a pretrained entry; the revision in the name keeps pins apart."""
    return os.path.join(cache_dir(), f"{entry.variant}_{entry.name}_{entry.revision[:12]}{weights_file.SUFFIX}")


def record_path(path):
    """The record beside a cached file: what it was converted from, and its SHA-256."""
    return path + ".json"


def pretrained_entry(weights, variant=None):
    """The `keras_cvt.pretrained` entry that `weights` names for `variant`, or None for a path.

    Raises ValueError for a name that `variant` does not have (listing those it has), and for
    any name when `variant` is None: the generic `CvT` builder has no pretrained weights.
    """
    if weights is None or not pretrained.is_pretrained_name(weights):
        return None
    if variant is None:
        weights_file.resolve_path(weights)  # raises, saying where names belong
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
    return weights_file.resolve_path(weights)


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
        with atomic.publish_file(path) as converted:
            try:
                weights_conversion.convert(raw, converted, model=entry.variant)
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
