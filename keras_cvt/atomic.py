"""Atomic publication of files and directories: readers see the old version or the new one.

Everything keras_cvt writes (converted weights, the pretrained cache, exports, checkpoints,
backups) is written under a temporary name beside its target and renamed into place only when
complete, so a kill, a full disk or an exception never leaves half a file under the real name.
"""

import contextlib
import glob
import hashlib
import os
import shutil
import tempfile

from keras_cvt.errors import describe_error


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
    staging = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
    try:
        temporary = os.path.join(staging, name)
        yield temporary
        if not os.path.isfile(temporary):
            raise RuntimeError(f"nothing was written for {path!r}")
        os.chmod(temporary, readable_mode(0o644))
        os.replace(temporary, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
    try:
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
    path = os.path.abspath(os.fspath(path))
    parent, name = os.path.split(path)
    for pattern in (f".{name}.tmp-*", f".{name}.old-*"):
        for leftover in glob.glob(os.path.join(glob.escape(parent), pattern)):
            shutil.rmtree(leftover, ignore_errors=True)


def sha256_file(path, chunk_size=1 << 20):
    """The hex SHA-256 of a file's bytes, read in chunks (bounded memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
