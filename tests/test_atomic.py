"""keras_cvt.atomic: a failed or killed write never shows under the real name."""

import hashlib
import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import pytest

from keras_cvt import atomic
from tests.conftest import ROOT


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    path = tmp_path / "out.bin"
    atomic.write_bytes(path, b"old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic.publish_file(path) as temporary:
            with open(temporary, "wb") as f:
                f.write(b"half")
            raise RuntimeError("disk full")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_nothing_written_is_an_error_not_an_empty_file(tmp_path):
    with pytest.raises(RuntimeError, match="nothing was written"):
        with atomic.publish_file(tmp_path / "out.bin"):
            pass
    assert os.listdir(tmp_path) == []


def test_a_directory_is_not_a_file_target(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a directory"):
        with atomic.publish_file(tmp_path):
            pass


def test_a_directory_is_swapped_in_whole_or_not_at_all(tmp_path):
    target = tmp_path / "1"
    with atomic.publish_directory(target) as staging:
        pathlib.Path(staging, "a").touch()
    assert sorted(os.listdir(target)) == ["a"]
    with pytest.raises(FileExistsError, match="not empty"):
        with atomic.publish_directory(target):
            pass
    with pytest.raises(RuntimeError):
        with atomic.publish_directory(target, overwrite=True) as staging:
            pathlib.Path(staging, "b").touch()
            raise RuntimeError
    assert sorted(os.listdir(target)) == ["a"] and sorted(os.listdir(tmp_path)) == ["1"]
    with atomic.publish_directory(target, overwrite=True) as staging:
        pathlib.Path(staging, "b").touch()
    assert sorted(os.listdir(target)) == ["b"] and sorted(os.listdir(tmp_path)) == ["1"]


@pytest.mark.slow
def test_a_kill_while_publishing_leaves_only_what_remove_leftovers_removes(tmp_path):
    path = tmp_path / "out.bin"
    atomic.write_bytes(path, b"old")
    (tmp_path / "other.bin").write_bytes(b"x")
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        from keras_cvt import atomic
        with atomic.publish_file({str(path)!r}) as temporary:
            with open(temporary, "wb") as f:
                f.write(b"half")
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], timeout=120)
    assert result.returncode == -signal.SIGKILL
    assert path.read_bytes() == b"old"
    leftovers = [name for name in os.listdir(tmp_path) if name.startswith(".out.bin.tmp-")]
    assert len(leftovers) == 1
    atomic.remove_leftovers(path)
    assert sorted(os.listdir(tmp_path)) == ["other.bin", "out.bin"]


def test_sha256_file_reads_in_chunks(tmp_path):
    path = tmp_path / "data"
    path.write_bytes(b"abc" * 1000)
    expected = hashlib.sha256(b"abc" * 1000).hexdigest()
    assert atomic.sha256_file(path, chunk_size=7) == atomic.sha256_file(path) == expected


def test_check_writable_tries_where_the_output_will_go(tmp_path):
    # A missing directory chain is fine: the first existing ancestor is tried.
    atomic.check_writable(tmp_path / "a" / "b" / "m.onnx", "path")
    atomic.check_writable(tmp_path, "--output")  # an existing directory (a SavedModel replaced)
    assert list(tmp_path.iterdir()) == []  # the trial leaves nothing
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=rf"^cannot write `output_path` '{tmp_path}/file/m': '{tmp_path}/file' is not a directory"):
        atomic.check_writable(tmp_path / "file" / "m", "output_path")
