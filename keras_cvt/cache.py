"""The pretrained cache: each checkpoint converted once, verified, and kept.

The download itself is huggingface_hub's (`keras_cvt.downloads`): the hub's file stays in its cache
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

from keras_cvt import conversion
from keras_cvt import _version, atomic, downloads, weights_file
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


def fetch(entry, progress=True, commit=None, config=None):
    """The converted weights of an entry: from the cache, or downloaded and converted into it.

    `entry` is a `keras_cvt.pretrained.Pretrained` record or a `keras_cvt.hf.HubFile`. Its
    revision is resolved to a commit first (a pinned one is already; `commit`, when given, is
    the one to take, e.g. that of the repo's config.json; `config`, the `keras_cvt.CvT`
    arguments it declares, which the tensors must fit before a model is built for them); a
    cached file is used only if it matches its record (size, SHA-256, source, commit); one
    that does not is downloaded and converted again, with a warning naming it. Offline, a
    branch is taken at the commit of its last conversion here.

    Raises:
        keras_cvt.downloads.OfflineError: not cached and `HF_HUB_OFFLINE` is set.
        keras_cvt.downloads.HubError: the download failed or did not verify.
        ValueError: the verified download does not convert (a wrong file at that revision), or
            the cached file fails verification and `HF_HUB_OFFLINE` forbids fetching it again.
    """
    unreachable = at = None
    if commit is None and downloads.COMMIT.fullmatch(entry.revision):
        commit = entry.revision
    if commit is None and not downloads.offline():
        try:
            at = downloads.remote(entry)
            commit = at.commit
        except downloads.NotFoundError:
            raise
        except downloads.HubError as error:
            # What the branch was when it was last converted here still serves, with a warning.
            unreachable = error
    if commit is None:
        commit = last_commit(entry)
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
        if downloads.offline():
            raise ValueError(
                f"the cached {entry.variant} weights {entry.name!r} at {path} fail verification: "
                f"{problem}. HF_HUB_OFFLINE is set, so they cannot be downloaded again: delete "
                f"{path} and {record_path(path)}, then run again with network access. "
                + downloads.manual_instructions(entry)
            )
        warnings.warn(
            f"the cached {entry.variant} weights {entry.name!r} at {path} fail verification "
            f"({problem}); downloading and converting them again",
            stacklevel=2,
        )
    elif downloads.offline() and commit is None:
        raise downloads.OfflineError(
            f"HF_HUB_OFFLINE is set and the {entry.variant} weights {entry.name!r} are not cached "
            f"in {cache_dir()}, so {downloads.describe(entry)} would have to be downloaded. "
            + downloads.manual_instructions(entry)
        )
    try:
        if unreachable is not None:
            raise unreachable
        raw, source_sha256, commit = downloads.download(entry, at or commit, progress=progress)
    except downloads.HubError as error:
        if problem is None:
            raise
        raise type(error)(
            f"the cached file {path} fails verification ({problem}) and could not be fetched "
            f"again (it stays until a download succeeds, or delete it): {error}"
        ) from error
    path = cached_path(entry, commit)
    _convert(entry, raw, path, config)
    write_record(entry, path, source_sha256, commit)
    _remove_superseded(entry, path)
    return path


def _convert(entry, raw, path, config=None):
    os.makedirs(cache_dir(), exist_ok=True)
    with atomic.publish_file(path) as converted:
        try:
            conversion.convert(
                raw,
                converted,
                model=entry.variant if entry.variant in VARIANTS and config is None else None,
                config=config,
            )
        except ValueError as error:
            raise ValueError(
                f"{downloads.describe(entry)} was downloaded and verified, but does not convert to "
                f"{entry.variant}: {error}"
            ) from error


def _converted_files(entry, any_variant=False):
    variant = "*" if any_variant else glob.escape(entry.variant)
    return glob.glob(os.path.join(glob.escape(cache_dir()), f"{variant}_{glob.escape(entry.name)}_*{weights_file.SUFFIX}"))


def last_commit(entry, any_variant=False):
    """The commit of the newest conversion of `entry`'s file here, for when the hub cannot say
    (offline, unreachable) what its branch points to: the full commit its record names, else
    the 12 digits of its file name; None if it was never converted here.

    `any_variant`: the file of a `hf://` repo, whatever architecture it was converted for.
    """
    files = sorted(_converted_files(entry, any_variant), key=os.path.getmtime)
    if not files:
        return None
    newest = os.path.basename(files[-1])
    short = newest[: -len(weights_file.SUFFIX)].rsplit("_", 1)[-1]
    with contextlib.suppress(OSError, ValueError, AttributeError):
        with open(record_path(files[-1]), encoding="utf-8") as f:
            commit = json.load(f).get("commit")
        if isinstance(commit, str) and downloads.COMMIT.fullmatch(commit) and commit.startswith(short):
            return commit
    return short


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
