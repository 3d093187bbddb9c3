"""Training and exports under the faults of production: a second writer, a pre-emption signal,
a damaged backup, a full disk, a dead writer's staging. Each fault is the real thing: a second
process, a signal the kernel delivers, flipped bits on disk, a 30 MB tmpfs filled up.

The runs that must be killed or signalled run examples/train.py in subprocesses
(tests/training_worker.py `killable`, which acts at a named phase); the rest run here.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest

from keras_cvt import atomic, locks, training
from keras_cvt.export import cli as export_cli
from tests.conftest import ROOT
from tests.test_training import SMALL, SMALL_ARGS, TINY, flags, subprocess_env, write_image_folder
from tests.test_training_faults import Crash, compiled, leftovers, train_data
from tests.training_worker import load_example

# A second process that holds a lock until it is killed: `python -c HOLDER TARGET WHAT INSIDE`.
HOLDER = textwrap.dedent(
    f"""
    import sys, time
    sys.path.insert(0, {str(ROOT)!r})
    from keras_cvt import locks
    with locks.exclusive(sys.argv[1], sys.argv[2], inside=sys.argv[3] == "inside"):
        print("locked", flush=True)
        time.sleep(600)
    """
)


@contextlib.contextmanager
def holder(target, what, inside=False):
    """A second process holding `target`'s lock for the block, SIGKILLed at its end."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(target), what, "inside" if inside else "beside"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout.readline().strip() == "locked"
        yield process
    finally:
        process.kill()
        process.wait(timeout=60)


def train_args(data, output_dir, **extra):
    """16 training images of 2 classes, batch 4: 4 steps per epoch, 2 epochs, a backup every 2 steps."""
    args = [*SMALL_ARGS, *flags(image_folder=data, image_size=32, epochs=2, batch_size=4)]
    args += flags(learning_rate=1e-3, warmup_epochs=1, output_dir=output_dir, backup_every=2)
    return args + flags(strategy="none", seed=3, verbose=0, **extra)


def worker(args, event, action, **popen):
    """examples/train.py in a process of its own, doing `action` at `event` (training_worker)."""
    command = [sys.executable, "-m", "tests.training_worker", "killable", "-", "--", *args]
    env = subprocess_env(KERAS_CVT_KILL_AT=event, KERAS_CVT_ACTION=action)
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def finish(process, timeout=300):
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def newest_backup(output_dir):
    backups = training.ResumableBackupAndRestore.backups(os.path.join(output_dir, "backup"))
    return backups[0] if backups else None


def backup_position(path):
    with h5py.File(path, "r") as f:
        return int(f.attrs["epoch"]), int(f.attrs["step"])


def flip_exponent_bit(path):
    """Flips the high exponent bit of a float32 weight in an HDF5 file, in place (as the issue's
    -0.059 that became -2.0e37); returns the dataset's name."""
    with h5py.File(path, "r") as f:
        names = []
        f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        name = next(n for n in names if f[n].dtype == np.float32 and f[n].size > 1)
        offset = f[name].id.get_offset()
    with open(path, "r+b") as f:
        f.seek(offset + 3)  # little-endian float32: the sign and the exponent's high bits
        byte = f.read(1)[0]
        f.seek(offset + 3)
        f.write(bytes([byte ^ 0x40]))
    return name


# ---------------------------------------------------------------------------------------------
# One writer per run directory, and pre-emption.


@pytest.mark.slow
def test_one_writer_per_run_and_signals_back_up_at_the_step_then_resume_exactly(tmp_path, capsys):
    data = write_image_folder(tmp_path / "images", per_class=9, classes=2, size=(16, 16))
    out = tmp_path / "run"
    args = train_args(data, out)
    train = load_example("train")

    # A training process, frozen (SIGSTOP) mid-run at step 3 with a backup at step 2, holds the
    # directory: a second one stops at once, before reading any data, naming it and its pid.
    first = worker(args, "step@3", "SIGSTOP")
    deadline = time.monotonic() + 300
    while open(f"/proc/{first.pid}/stat").read().split(") ")[1][0] != "T":
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.5)
    capsys.readouterr()
    assert train.main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no "replica(s), global batch ..." line: it stopped before the data
    assert captured.err.startswith(f"train.py: error: {out} (training run directory) is in use by process {first.pid}")
    assert captured.err.count("\n") == 1
    # The kernel releases the lock of a killed process.
    first.kill()
    assert finish(first)[0] == -signal.SIGKILL
    assert backup_position(newest_backup(out)) == (0, 2)

    # SIGTERM as step 5 begins: step 5 finishes (epoch 1 step 1), a backup there, status 143.
    status, stdout, stderr = finish(worker(args, "step@4", "SIGTERM"))
    assert status == 143, stderr[-3000:]
    assert "Starting at optimizer step 2" in stdout
    backup = newest_backup(out)
    assert stderr.strip().splitlines()[-1] == (
        f"train.py: stopped by SIGTERM at epoch 1 step 1 after writing the backup {backup}: run the same "
        "command again to resume there (exit status 143)"
    )
    assert backup_position(backup) == (1, 1) and atomic.verify(backup) is None
    # SIGINT (Ctrl-C) as step 7 begins: a backup at epoch 1 step 3, status 130.
    status, stdout, stderr = finish(worker(args, "step@6", "SIGINT"))
    assert status == 130, stderr[-3000:]
    assert "Starting at optimizer step 5" in stdout and "stopped by SIGINT at epoch 1 step 3" in stderr
    assert backup_position(newest_backup(out)) == (1, 3)

    # The rerun resumes there and ends after the uninterrupted run's 2 x 4 optimizer steps.
    capsys.readouterr()
    assert train.main(args) == 0
    printed = capsys.readouterr().out
    assert "Starting at optimizer step 7" in printed and "Resumed at epoch 1 step 3" in printed
    assert "Optimizer steps: 8" in printed
    assert json.loads((out / "completed.json").read_text())["optimizer_steps"] == 8
    assert os.listdir(out / "backup") == [] and leftovers(out) == []
    assert not (out / ".lock").exists()


@pytest.mark.slow
def test_a_signal_reaching_one_worker_stops_every_worker_at_the_same_step(tmp_path):
    from tests.test_training import free_port

    data = write_image_folder(tmp_path / "images", per_class=11)
    ports = [free_port(), free_port()]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    out = tmp_path / "run"  # shared by both workers, as a run directory on a network disk is

    def start(index, event=None):
        config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        args = [*SMALL_ARGS, *flags(image_folder=data, image_size=32, epochs=2, batch_size=4)]
        args += flags(learning_rate=1e-3, warmup_epochs=0, output_dir=out, backup_every=0, seed=1, verbose=0)
        command = [sys.executable, "-m", "tests.training_worker", "multiworker", str(tmp_path / f"w{index}.npz")]
        env = {"TF_CONFIG": config}
        if event is not None:
            env.update(KERAS_CVT_KILL_AT=event, KERAS_CVT_ACTION="SIGTERM")
        return subprocess.Popen(
            [*command, "--", *args], cwd=ROOT, env=subprocess_env(**env),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )

    def run(events):
        workers = [start(index, event) for index, event in enumerate(events)]
        try:
            return [(w.wait(timeout=600), w.stdout.read()) for w in workers]
        finally:
            for w in workers:
                if w.poll() is None:
                    w.kill()

    # 30 images (10% of each class held out), 2 workers x 4: 3 steps per epoch. Only worker 1
    # (not the chief) receives SIGTERM, as step 2 begins; both finish step 2 and stop there.
    # The other worker never acts ("never" is no phase).
    results = run(["never@0", "step@1"])
    for status, output in results:
        assert status == 143, output[-5000:]
        assert "stopped by SIGTERM at epoch 0 step 2 after writing the backup" in output, output[-3000:]
    assert backup_position(newest_backup(out)) == (0, 2)

    # Both resume there and end after 2 x 3 optimizer steps, with the same weights.
    results = run([None, None])
    for status, output in results:
        assert status == 0, output[-5000:]
        assert "Resumed at epoch 0 step 2" in output
    chief, other = (dict(np.load(tmp_path / f"w{i}.npz")) for i in range(2))
    assert int(chief["__iterations__"]) == int(other["__iterations__"]) == 6
    for key in chief:
        np.testing.assert_array_equal(chief[key], other[key], err_msg=key)


# ---------------------------------------------------------------------------------------------
# Verified files.


@pytest.mark.slow
def test_a_damaged_backup_is_refused_by_name_and_the_previous_one_used(tmp_path):
    out = tmp_path / "run"
    common = {"epochs": 2, "steps_per_epoch": 4, "output_dir": str(out), "backup_every": 1, "verbose": 0}
    with pytest.raises(RuntimeError, match="crash"):
        training.fit(compiled(SMALL), train_data(), callbacks=[Crash(3)], **common)
    backups = training.ResumableBackupAndRestore.backups(out / "backup")
    assert [backup_position(p) for p in backups] == [(0, 3), (0, 2)]  # two generations kept
    newest, previous = backups
    flip_exponent_bit(newest)

    model = compiled(SMALL)
    with pytest.warns(UserWarning) as warned:
        history, resumed = training.fit(model, train_data(), **common)
    message = next(str(w.message) for w in warned if "damaged" in str(w.message))
    assert message.startswith(f"refused the damaged backup {newest}: its SHA-256 is ")
    assert message.endswith(f"resuming from the previous one, {previous}")
    assert resumed == (0, 2) and int(model.optimizer.iterations.numpy()) == 8
    assert os.path.exists(newest + ".damaged")

    # A damaged checkpoint is refused by name before anything is loaded.
    last = out / "checkpoints" / "last.weights.h5"
    flip_exponent_bit(last)
    with pytest.raises(ValueError, match=f"the checkpoint {last} is damaged: its SHA-256 is [0-9a-f]{{64}}, its record"):
        training.fit(compiled(SMALL), train_data(), **common)
    # Every backup damaged: refused, naming each.
    (out / "completed.json").unlink()
    atomic.remove_verified(last)
    with pytest.raises(RuntimeError, match="crash"):
        training.fit(compiled(SMALL), train_data(), restart=True, callbacks=[Crash(3)], **common)
    for path in training.ResumableBackupAndRestore.backups(out / "backup"):
        flip_exponent_bit(path)
    with pytest.raises(ValueError, match="(?s)every backup is damaged, refused:\n  .*00000003.*\n  .*00000002.*--restart"):
        training.fit(compiled(SMALL), train_data(), **common)


def test_the_record_vouches_for_the_old_or_the_new_file_whatever_the_kill(tmp_path):
    path = tmp_path / "w.bin"
    with atomic.publish_verified(path) as temporary:
        open(temporary, "wb").write(b"old")
    assert atomic.verify(path) is None
    # A kill between the record's publication and the file's: the record accepts both.
    with pytest.raises(KeyboardInterrupt):
        with atomic.publish_verified(path) as temporary:
            open(temporary, "wb").write(b"new content")
            raise KeyboardInterrupt  # before the record: nothing changes
    assert path.read_bytes() == b"old" and atomic.verify(path) is None
    record = json.loads(open(atomic.record_path(path)).read())
    assert record == {"size": 3, "sha256": atomic.sha256_file(path)}
    with atomic.publish_verified(path) as temporary:
        open(temporary, "wb").write(b"new content")
    record = json.loads(open(atomic.record_path(path)).read())
    assert record["size"] == 11 and record["replaces"]["size"] == 3
    path.write_bytes(b"old")  # what a kill right after the record leaves: the old file
    assert atomic.verify(path) is None
    path.write_bytes(b"new-content")  # the same size, another content
    assert atomic.verify(path).startswith("its SHA-256 is ")
    path.write_bytes(b"truncated")
    assert atomic.verify(path) == "it has 9 bytes, its record says 11"
    os.remove(atomic.record_path(path))
    assert atomic.verify(path) == f"its record {atomic.record_path(path)} is missing"
    atomic.remove_verified(path)
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# Full disks.


@pytest.fixture
def small_disk(tmp_path):
    """A real 30 MB tmpfs (needs root; skipped with the reason where mounting is not allowed)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=30m", "tmpfs", str(mount)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() or result.returncode}): needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(mount, leave=16 * 1024):
    stat = os.statvfs(mount)
    with open(mount / "filler", "wb") as f:
        f.write(b"\0" * max(stat.f_bavail * stat.f_frsize - leave, 0))


def test_a_full_disk_is_one_named_error_keeping_the_previous_file(small_disk):
    path = small_disk / "out.bin"
    with atomic.publish_verified(path) as temporary:
        open(temporary, "wb").write(b"old")
    fill(small_disk)
    with pytest.raises(atomic.WriteError) as error:
        atomic.write_bytes(path, b"x" * 2**20)
    assert error.value.errno == 28
    assert str(error.value) == f"could not write {path}: No space left on device (ENOSPC); the previous {path} is unchanged"
    with pytest.raises(atomic.WriteError, match=f"nothing was written at {small_disk / 'd'}"):
        with atomic.publish_directory(small_disk / "d") as staging:
            open(os.path.join(staging, "big"), "wb").write(b"x" * 2**20)
    # What training's h5py writes do first: the file system grants their size, or they stop here.
    with pytest.raises(atomic.WriteError, match=f"could not write {path}: No space left on device"):
        with atomic.publish_verified(path) as temporary:
            atomic.reserve_space(temporary, 2**20)
    assert path.read_bytes() == b"old"
    assert sorted(os.listdir(small_disk)) == ["filler", "out.bin", "out.bin.sha256.json"]


# The conversion that fills the pretrained cache (KERAS_HOME on a small disk), in a process of
# its own: h5py's crash would end it with SIGSEGV rather than raise.
CONVERT = textwrap.dedent(
    f"""
    import sys
    sys.path.insert(0, {str(ROOT)!r})
    from keras_cvt import atomic
    from keras_cvt.conversion import convert
    try:
        convert(sys.argv[1], sys.argv[2])
    except atomic.WriteError as error:
        print(error)
        sys.exit(1)
    """
)


@pytest.mark.slow
def test_converting_onto_a_full_disk_is_one_error_not_a_crash(small_disk):
    fill(small_disk)
    output = small_disk / "cache" / "tiny.weights.h5"
    checkpoint = ROOT / "tests" / "fixtures" / "cvt_tiny_official_perturbed.pth"
    result = subprocess.run(
        [sys.executable, "-c", CONVERT, str(checkpoint), str(output)], capture_output=True, text=True,
        env=subprocess_env(), timeout=300,
    )
    assert result.returncode == 1, result.stderr[-3000:]  # not -11 (SIGSEGV)
    assert result.stdout.strip() == f"could not write {output}: No space left on device (ENOSPC); nothing was written at {output}"
    assert os.listdir(small_disk / "cache") == []
    (small_disk / "filler").unlink()
    result = subprocess.run(
        [sys.executable, "-c", CONVERT, str(checkpoint), str(output)], capture_output=True, text=True,
        env=subprocess_env(), timeout=300,
    )
    assert result.returncode == 0 and os.listdir(small_disk / "cache") == ["tiny.weights.h5"]


@pytest.mark.slow
def test_training_on_a_full_disk_stops_with_one_error_and_resumes_once_there_is_space(tmp_path, small_disk, capsys):
    data = write_image_folder(tmp_path / "images", per_class=9, classes=2, size=(16, 16))
    out = small_disk / "run"
    args = train_args(data, out)
    # Right after the backup at step 2 is published, the disk is filled up: the checkpoints at
    # the end of epoch 0 cannot be written.
    status, stdout, stderr = finish(worker(args, "published:backup-*.weights.h5@2", f"fill:{small_disk / 'filler'}"))
    assert status == 1, stderr[-3000:]  # an exit, not SIGSEGV (-11) as in h5py's crash
    error = stderr.strip().splitlines()[-1]
    assert error == (
        f"train.py: error: could not write {out / 'checkpoints' / 'last.weights.h5'}: No space left on device "
        f"(ENOSPC); nothing was written at {out / 'checkpoints' / 'last.weights.h5'}"
    ), stderr[-3000:]
    backup = newest_backup(out)
    assert backup_position(backup) == (0, 2) and atomic.verify(backup) is None
    assert leftovers(out) == [] and not (out / "checkpoints" / "last.weights.h5").exists()

    (small_disk / "filler").unlink()
    train = load_example("train")
    capsys.readouterr()
    assert train.main(args) == 0
    printed = capsys.readouterr().out
    assert "Resumed at epoch 0 step 2" in printed and "Optimizer steps: 8" in printed


# ---------------------------------------------------------------------------------------------
# Leftovers, and exports.


@pytest.mark.slow
def test_a_refused_rerun_removes_dead_writers_staging(tmp_path):
    out = tmp_path / "run"
    common = {"steps_per_epoch": 1, "output_dir": str(out), "verbose": 0}
    training.fit(compiled(TINY), train_data(), epochs=1, **common)
    # What kills while publishing left: staging directories with half-written files.
    for staging in (out / "checkpoints" / ".last.weights.h5.tmp-dead", out / "backup" / ".backup-00000-00000001.weights.h5.tmp-dead"):
        staging.mkdir(parents=True)
        (staging / "half").write_bytes(b"\0" * 100)
    with pytest.raises(ValueError, match="holds a completed run, which differs from this one in\n  epochs: 1 there, 2 here"):
        training.fit(compiled(TINY), train_data(), epochs=2, **common)
    assert leftovers(out) == []


def test_a_second_export_to_one_target_stops_at_once(tmp_path, capsys):
    target = tmp_path / "models" / "cvt13" / "1"
    with holder(target, "export target") as process:
        with pytest.raises(SystemExit) as exit_info:
            # A weights name it would have to download: the lock is taken before any of it.
            export_cli.main(["--model", "cvt13", "--weights", "imagenet", "--output", str(target)])
        assert exit_info.value.code == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert error.startswith(
            f"python -m keras_cvt.export: error: {target} (export target) is in use by process {process.pid}"
        )
    # Killed, the holder's lock is gone; its lock file stays until the next holder's release.
    with locks.exclusive(target, "export target") as lock_file:
        assert open(lock_file).read() == f"{os.getpid()}\n"
    assert not os.path.exists(lock_file)


def test_locks_nest_within_a_process_and_exclude_other_processes(tmp_path):
    directory = tmp_path / "run"
    with locks.exclusive(directory, "training run directory", inside=True) as lock_file:
        with locks.exclusive(directory, "training run directory", inside=True):
            assert os.path.exists(lock_file)
        assert os.path.exists(lock_file)  # the outer hold continues
        other = subprocess.run(
            [sys.executable, "-c", HOLDER, str(directory), "training run directory", "inside"],
            capture_output=True, text=True, timeout=120,
        )
        assert other.returncode == 1 and "LockedError" in other.stderr
        assert f"in use by process {os.getpid()}" in other.stderr
    assert lock_file == str(directory / ".lock") and not os.path.exists(lock_file)
