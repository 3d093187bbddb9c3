"""One writer at a time: an OS lock (`fcntl.flock`) on a lock file, released when its process ends.

A training run directory and an export target each have one writer at a time. The lock is
the kernel's, on an open file, so a process that is killed (SIGKILL, a crash, a lost node)
releases it with no stale lock to clean up (its lock file may stay: the next holder takes it
over). The file holds the holder's pid, for the message of the process that finds it taken,
and is removed when the lock is released; a process that locked a file just removed that way
sees that the name now points elsewhere and locks again (the lock belongs to the file under
the name, not to a removed one).
"""

import contextlib
import fcntl
import os

# Locks this process holds, by lock file: taking one again (fit inside train.py) nests.
_HELD = {}


class LockedError(RuntimeError):
    """What a process is told when another one writes where it means to write."""


def lock_path(target, inside=False):
    """The lock file of `target`: beside it (`.<name>.lock`), or `<target>/.lock` with `inside`.

    Inside suits a directory that is written into (a run directory: its parent may not be
    ours); beside suits a target that is replaced whole (an export).
    """
    target = os.path.abspath(os.fspath(target))
    if inside:
        return os.path.join(target, ".lock")
    parent, name = os.path.split(target)
    return os.path.join(parent, f".{name}.lock")


def _holder(path):
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read(32).strip() or "unknown"
    except OSError:
        return "unknown"


@contextlib.contextmanager
def exclusive(target, what, inside=False):
    """Holds the lock of `target` for the block; raises LockedError at once if another process does.

    Args:
        target: the directory or file to write (it need not exist yet).
        what: what it is, for the message ("training run directory", "export target").
        inside: where the lock file is (`lock_path`).
    """
    path = lock_path(target, inside)
    if path in _HELD:
        _HELD[path][1] += 1
        try:
            yield path
        finally:
            _HELD[path][1] -= 1
        return
    created = _make_directories(os.path.dirname(path))
    descriptor = _lock(path, target, what)
    try:
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        _HELD[path] = [descriptor, 1]
        try:
            yield path
        finally:
            del _HELD[path]
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)  # while still locked: no one else holds this file
            for directory in created:  # those the lock file needed, unless filled meanwhile
                with contextlib.suppress(OSError):
                    os.rmdir(directory)
    finally:
        os.close(descriptor)  # releases the lock


def _make_directories(directory):
    """Makes `directory` and its missing parents; returns those it made, deepest first."""
    missing = []
    while not os.path.isdir(directory):
        missing.append(directory)
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
    if missing:
        os.makedirs(missing[0], exist_ok=True)
    return missing


def _lock(path, target, what):
    """A descriptor of the file at `path`, locked; LockedError if another process holds it."""
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise LockedError(
                f"{os.fspath(target)} ({what}) is in use by process {_holder(path)} (lock file {path}): "
                "wait for it to finish or stop it; two writers would overwrite each other's files"
            ) from None
        except BaseException:
            os.close(descriptor)
            raise
        try:
            named, held = os.stat(path), os.fstat(descriptor)
            if (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino):
                return descriptor
        except FileNotFoundError:
            pass
        os.close(descriptor)  # its holder removed it as we opened it: lock the new one
