"""The pretrained cache: each checkpoint converted once, verified, and kept.

The download itself is huggingface_hub's (`keras_cvt.hub`): the hub's file stays in its cache
(`HF_HUB_CACHE`, `~/.cache/huggingface/hub`), shared with transformers and anyone else. Ours,
`$KERAS_HOME/models/keras_cvt`, holds per checkpoint and commit the converted `.weights.h5`
(named `<variant>_<weights>_<commit[:12]>.weights.h5`) and beside it a record (`<file>.json`)
written after it: the file's size and SHA-256, the hub file and commit it was converted from,
and the keras_cvt version. A checkpoint at a branch (`main`) is looked up by the commit the hub
says the branch is at now, so an upstream change is a new conversion. The file is used only
while it matches its record; otherwise it is converted again, or, offline, refused with its
path and what to delete.
"""

import contextlib
import glob
import json
import os
import warnings

import weights_conversion
from keras_cvt import _version, atomic, hub, pretrained, weights_file
from keras_cvt.architectures import VARIANTS

# Bumped when converted files change (layout, conversion): older cache entries are redone.
CACHE_FORMAT = 1


def cache_dir():
    """Where converted pretrained weights are kept: `$KERAS_HOME/models/keras_cvt`."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, "models", "keras_cvt")


def cached_path(entry, commit):
    """The converted file of an entry's file at `commit`: a new commit is a new file, so an
    upstream change of a branch (`main`) is noticed."""
    return os.path.join(cache_dir(), f"{entry.variant}_{entry.name}_{commit[:12]}{weights_file.SUFFIX}")


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
    """The converted weights of an entry: from the cache, or downloaded and converted into it.

    `entry` is a `keras_cvt.pretrained.Pretrained` record or a `keras_cvt.hf.HubFile`. Its
    revision is resolved to a commit first (a pinned one is already); a cached file is used only
    if it matches its record (size, SHA-256, source, commit); one that does not is downloaded
    and converted again, with a warning naming it.

    Raises:
        keras_cvt.hub.OfflineError: not cached and `HF_HUB_OFFLINE` is set.
        keras_cvt.hub.HubError: the download failed or did not verify.
        ValueError: the verified download does not convert (a wrong file at that revision), or
            the cached file fails verification and `HF_HUB_OFFLINE` forbids fetching it again.
    """
    unreachable = None
    try:
        commit = hub.resolve_commit(entry)
    except hub.NotFoundError:
        raise
    except hub.HubError as error:
        # What the branch was when it was last converted here still serves, with a warning.
        commit, unreachable = None, error
    if commit is None:
        commit = _last_converted_commit(entry)
        if commit is None and unreachable is not None:
            raise unreachable
    path = None if commit is None else cached_path(entry, commit)
    problem = None
    if path is not None and os.path.isfile(path):
        problem = verify_cached(entry, path, commit)
        if problem is None:
            if unreachable is not None:
                warnings.warn(
                    f"could not ask the hub which commit {entry.repo}@{entry.revision} is now "
                    f"({unreachable}); using {path}, converted from the commit it was when downloaded",
                    stacklevel=2,
                )
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
    elif hub.offline() and commit is None:
        raise hub.OfflineError(
            f"HF_HUB_OFFLINE is set and the {entry.variant} weights {entry.name!r} are not cached "
            f"in {cache_dir()}, so {hub.describe(entry)} would have to be downloaded. "
            + hub.manual_instructions(entry)
        )
    try:
        if unreachable is not None:
            raise unreachable
        raw, source_sha256 = hub.download(entry, progress=progress)
    except hub.HubError as error:
        if problem is None:
            raise
        raise type(error)(
            f"the cached file {path} fails verification ({problem}) and could not be fetched "
            f"again (it stays until a download succeeds, or delete it): {error}"
        ) from error
    # At the branch, so that huggingface_hub records where it points for later offline runs; the
    # commit fetched is in the path (the branch may have moved since it was asked).
    commit = _snapshot_commit(raw)
    path = cached_path(entry, commit)
    _convert(entry, raw, path)
    write_record(entry, path, source_sha256, commit)
    _remove_superseded(entry, path)
    return path


def _snapshot_commit(path):
    """The commit of a file in huggingface_hub's cache (`.../snapshots/<commit>/<file>`)."""
    return os.path.basename(os.path.dirname(path))


def _convert(entry, raw, path):
    os.makedirs(cache_dir(), exist_ok=True)
    with atomic.publish_file(path) as converted:
        try:
            weights_conversion.convert(
                raw, converted, model=entry.variant if entry.variant in VARIANTS else None
            )
        except ValueError as error:
            raise ValueError(
                f"{hub.describe(entry)} was downloaded and verified, but does not convert to "
                f"{entry.variant}: {error}"
            ) from error


def _converted_files(entry):
    prefix = glob.escape(os.path.join(cache_dir(), f"{entry.variant}_{entry.name}_"))
    return glob.glob(prefix + "*" + weights_file.SUFFIX)


def _last_converted_commit(entry):
    """The commit (its first 12 digits) of the newest converted file of `entry`, for when
    neither the hub nor huggingface_hub's cache can say what its branch points to."""
    files = sorted(_converted_files(entry), key=os.path.getmtime)
    prefix = f"{entry.variant}_{entry.name}_"
    return os.path.basename(files[-1])[len(prefix) : -len(weights_file.SUFFIX)] if files else None


def _remove_superseded(entry, path):
    """Removes the converted files of older commits of a branch, once a newer one is in place."""
    if entry.sha256 is not None:
        return
    for other in _converted_files(entry):
        if other != path:
            for stale in (other, record_path(other)):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(stale)


def _identity(entry):
    return {
        "format": CACHE_FORMAT,
        "variant": entry.variant,
        "repo": entry.repo,
        "filename": entry.filename,
    }


def write_record(entry, path, source_sha256, commit):
    """Records the file at `path` as the converted weights of `entry`'s file at `commit`, whose
    SHA-256 is `source_sha256`; the cache trusts the file while it matches this record.

    Also the way to install a file converted by hand (from a `tf_model.h5` downloaded
    elsewhere) at `cached_path(entry, commit)`.
    """
    record = {
        **_identity(entry),
        # The revision asked for (a branch, a tag...) is for people; the commit is what counts.
        "revision": entry.revision,
        "commit": commit,
        "source_sha256": source_sha256,
        "size": os.path.getsize(path),
        "sha256": atomic.sha256_file(path),
        "keras_cvt": _version.__version__,
    }
    atomic.write_bytes(record_path(path), (json.dumps(record, indent=2) + "\n").encode())


def verify_cached(entry, path, commit):
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
    if not str(record.get("commit", "")).startswith(commit):
        different.append("commit")
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
