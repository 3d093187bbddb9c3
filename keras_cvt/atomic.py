"""Atomic publication of files and directories: readers see the old version or the new one.

Everything keras_cvt writes (converted weights, the pretrained cache, exports, checkpoints,
backups) is written under a temporary name beside its target and renamed into place only when
complete, so a kill, a full disk or an exception never leaves half a file under the real name.
An I/O error while writing (a full disk, a quota, a read-only file system) is one `WriteError`
naming the file, and the previous file stays.

Files that must be checked before use (training's backups and checkpoints) are published with
`publish_verified`: beside each, `<file>.sha256.json` records its size and SHA-256, and
`verify` says whether the file still matches.
"""

import contextlib
import errno
import glob
import hashlib
import json
import math
import os
import shutil
import tempfile

import numpy

from keras_cvt.errors import describe_error


class WriteError(OSError):
    """A file or directory could not be written (full disk, quota, I/O error); the previous one stays.

    An `OSError` with the cause's errno (`errno.ENOSPC` for a full disk), so callers that
    catch `OSError` catch it too.
    """

    def __init__(self, path, cause):
        existed = os.path.exists(path)
        reason = cause.strerror or str(cause)
        code = errno.errorcode.get(cause.errno, "") if cause.errno else ""
        kept = f"the previous {path} is unchanged" if existed else f"nothing was written at {path}"
        super().__init__(
            cause.errno, f"could not write {path}: {reason}{f' ({code})' if code else ''}; {kept}", path
        )

    def __str__(self):
        return self.strerror


@contextlib.contextmanager
def _as_write_error(path):
    try:
        yield
    except WriteError:
        raise
    except OSError as error:
        raise WriteError(path, error) from error


def readable_mode(mode):
    """`mode` less the process umask.

    mkdtemp/mkstemp create private (0700/0600) entries; a model server running as another user
    (a Docker volume) must be able to read what we publish.
    """
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def _target(path):
    path = os.path.abspath(os.fspath(path))
    parent, name = os.path.split(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path!r} is a directory, expected a file path")
    os.makedirs(parent, exist_ok=True)
    return path, parent, name


@contextlib.contextmanager
def publish_file(path):
    """Yields a temporary path to write; renames it to `path` when the block completes.

    The temporary file sits in a private directory beside `path` (same file system, so the
    rename is atomic; a dot name, so servers and globs ignore it), and whatever the block raises,
    that directory is removed: nothing is left behind and `path` keeps its previous content.
    """
    path, parent, name = _target(path)
    with _as_write_error(path):
        staging = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
    try:
        temporary = os.path.join(staging, name)
        with _as_write_error(path):
            yield temporary
            if not os.path.isfile(temporary):
                raise RuntimeError(f"nothing was written for {path!r}")
            os.chmod(temporary, readable_mode(0o644))
            os.replace(temporary, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def reserve_space(path, size):
    """Allocates `size` bytes at `path` (a temporary file about to be overwritten), or raises OSError.

    For writers that cannot survive a full disk themselves: HDF5 (through h5py 3.14) crashes
    the process (SIGSEGV) when it closes a file whose last writes failed, so h5py files are
    written only after the file system has granted their size (quotas included, which a free
    space query does not see). Inside `publish_file`, the error becomes a WriteError naming
    the target. Where `os.posix_fallocate` is missing this does nothing.
    """
    if not hasattr(os, "posix_fallocate"):
        return
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.posix_fallocate(descriptor, 0, max(int(size), 1))
    finally:
        os.close(descriptor)


def reserve_for_variables(path, variables, previous=None, extra=0):
    """`reserve_space` for an HDF5 file of `variables` (anything with `.shape` and `.dtype`).

    Their bytes, HDF5's headers (under 2 KiB per array; 4 KiB are counted), `extra` bytes (of
    attributes) and 1 MiB for the file's own structures, or the size of `previous` (the file
    this one replaces, of the same arrays) when that is larger.
    """
    arrays = sum(
        math.prod(int(d) for d in v.shape) * numpy.dtype(getattr(v.dtype, "name", v.dtype)).itemsize
        for v in variables
    )
    size = arrays + 4096 * len(variables) + extra + 2**20
    if previous is not None and os.path.isfile(previous):
        size = max(size, os.path.getsize(previous))
    reserve_space(path, size)


def write_bytes(path, content):
    """Writes `content` to `path` atomically; returns the absolute path."""
    with publish_file(path) as temporary:
        with open(temporary, "wb") as f:
            f.write(content)
    return os.path.abspath(os.fspath(path))


@contextlib.contextmanager
def publish_directory(path, overwrite=False):
    """Yields a temporary directory to fill; swaps it in as `path` when the block completes.

    An existing non-empty `path` is refused unless `overwrite`; then it is replaced only after
    the new directory is complete (TF Serving, which loads numbered version directories only,
    never sees the dot-named staging directory).
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise FileExistsError(f"{path!r} exists and is not a directory")
    if os.path.isdir(path) and os.listdir(path) and not overwrite:
        raise FileExistsError(f"{path!r} exists and is not empty; pass overwrite=True to replace it")
    parent, name = os.path.split(path)
    with _as_write_error(path):
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
    try:
        with _as_write_error(path):
            yield staging
            os.chmod(staging, readable_mode(0o755))
            if os.path.isdir(path):
                old = tempfile.mkdtemp(prefix=f".{name}.old-", dir=parent)
                os.rename(path, os.path.join(old, name))
                os.rename(staging, path)
                shutil.rmtree(old)
            else:
                os.rename(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def remove_leftovers(path):
    """Removes what a kill while publishing `path` left behind: its dot-named staging entries.

    The kill that the rename protects against also skips the cleanup, so a process that
    publishes again after a crash calls this first.
    """
    parent, name = os.path.split(os.path.abspath(os.fspath(path)))
    _remove_staging(parent, f".{name}")


def remove_stale_staging(directory):
    """Removes every dot-named staging entry in `directory` (`remove_leftovers` of each file).

    Only for a directory whose writer holds its lock (`keras_cvt.locks`): staging there is then
    a dead writer's.
    """
    _remove_staging(os.fspath(directory), ".*")


def _remove_staging(directory, prefix):
    """Removes the staging entries (`<prefix>.tmp-*`, `<prefix>.old-*`) in `directory`."""
    for suffix in (".tmp-*", ".old-*"):
        for leftover in glob.glob(os.path.join(glob.escape(directory), prefix + suffix)):
            shutil.rmtree(leftover, ignore_errors=True)


def sha256_file(path, chunk_size=1 << 20):
    """The hex SHA-256 of a file's bytes, read in chunks (bounded memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def record_path(path):
    """Where `publish_verified` records the size and SHA-256 of `path`."""
    return f"{os.fspath(path)}.sha256.json"


def _fingerprint(path):
    return {"size": os.path.getsize(path), "sha256": sha256_file(path)}


def _read_record(path):
    try:
        with open(record_path(path), encoding="utf-8") as f:
            record = json.load(f)
    except FileNotFoundError:
        return None, f"its record {record_path(path)} is missing"
    except (OSError, ValueError) as error:
        return None, f"its record {record_path(path)} is unreadable ({error})"
    if not isinstance(record, dict) or not isinstance(record.get("sha256"), str):
        return None, f"its record {record_path(path)} is not a size and SHA-256 record"
    return record, None


@contextlib.contextmanager
def publish_verified(path):
    """`publish_file` that also records the new file's size and SHA-256 (`verify` checks them).

    The record is published first and still accepts the file it replaces, then the file is
    renamed into place: whenever a kill lands, the file under `path` is one that its record
    vouches for (the old one or the new one).
    """
    with publish_file(path) as temporary:
        yield temporary
        record = _fingerprint(temporary)
        previous, problem = _read_record(path)
        if problem is None and os.path.exists(path):
            record["replaces"] = {key: previous[key] for key in ("size", "sha256") if key in previous}
        write_bytes(record_path(path), (json.dumps(record, indent=1) + "\n").encode())


def verify(path):
    """None if `path` matches the record `publish_verified` wrote, else what is wrong with it."""
    path = os.fspath(path)
    record, problem = _read_record(path)
    if problem is not None:
        return problem
    try:
        actual = _fingerprint(path)
    except OSError as error:
        return f"it cannot be read ({error})"
    accepted = [record, record.get("replaces") or {}]
    if any(actual["size"] == r.get("size") and actual["sha256"] == r.get("sha256") for r in accepted):
        return None
    if actual["size"] != record.get("size"):
        return f"it has {actual['size']} bytes, its record says {record.get('size')}"
    return f"its SHA-256 is {actual['sha256']}, its record says {record['sha256']}: it changed after it was written"


def remove_verified(path):
    """Removes `path` and its record (the file first: a kill between leaves a record of nothing)."""
    for target in (os.fspath(path), record_path(path)):
        with contextlib.suppress(FileNotFoundError):
            os.remove(target)


def check_writable(path, argument):
    """Refuses an output `path` that cannot be written, before the work that would fill it.

    Tried, not inferred from permission bits (which root ignores and read-only file systems
    do not show): a private directory is made and removed where the output's first missing
    directory, or its staging entry (`publish_file`, `publish_directory`), will go. `argument`
    names the path in the message (`"output_path"`, `"--output"`).
    """
    absolute = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(absolute)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"cannot write `{argument}` {os.fspath(path)!r}: {parent!r} is not a directory")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".write-test-", dir=parent))
    except OSError as error:
        raise ValueError(f"cannot write `{argument}` {os.fspath(path)!r}: {describe_error(error)}") from error
