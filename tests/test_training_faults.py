"""keras_cvt.training under faults: killed anywhere and run again, rerun with other arguments,
rerun after completion, and image folders with unreadable files.

The kill test runs examples/train.py in subprocesses (tests/training_worker.py `killable`) that
SIGKILL themselves at a named phase; the runs after them that nothing kills, and the rest,
run here.
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_cvt import atomic, training
from tests.conftest import ROOT
from tests.test_training import SMALL, SMALL_ARGS, TINY, flags, subprocess_env, write_image_folder
from tests.training_worker import load_example


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(root):
    """What a kill inside `atomic.publish_file` would leave: its dot-named staging directories."""
    return sorted(str(p) for p in root.rglob(".*.tmp-*"))


# ---------------------------------------------------------------------------------------------
# Killed anywhere, run again.

# 16 training images (2 classes of 9, one of each held out), batch 4: 4 steps per epoch, a
# backup every 2 steps, 2 epochs: 8 optimizer steps. The backup due at step 4 lands on epoch
# 0's last step, before validation.
#
# Each run is killed at the next phase and the following one resumes from what it left:
# (kill phase, optimizer step the run is expected to start at).
PHASES = [
    ("step@3", 0),  # mid-epoch, as step 4 begins: back to the backup at step 2
    ("validation@4", 2),  # validation of epoch 0, after its last step (the backup due there)
    ("write:best.weights.h5@4", 2),  # while the best checkpoint is written
    ("published:best.weights.h5@4", 2),  # after the checkpoints, before the end-of-epoch backup
    ("write:backup-*.weights.h5@4", 2),  # while the end-of-epoch backup is written
    ("published:backup-*.weights.h5@6", 2),  # right after the periodic backup at step 6
    ("published:completed.json@8", 6),  # after the completion record, before the backup is deleted
]


# The phase whose backup (epoch 1, step 2: optimizer step 6) is also run to the end unkilled.
RESUMED_IN_EPOCH_1 = "published:backup-*.weights.h5@6"


@pytest.mark.slow
def test_a_run_killed_at_every_phase_resumes_and_ends_after_the_same_optimizer_steps(tmp_path, capsys):
    data = write_image_folder(tmp_path / "images", per_class=9, classes=2, size=(16, 16))
    out = tmp_path / "run"

    def train_args(output_dir):
        args = [*SMALL_ARGS, *flags(image_folder=data, image_size=32, epochs=2, batch_size=4)]
        args += flags(learning_rate=1e-3, warmup_epochs=1, output_dir=output_dir, backup_every=2)
        return args + flags(strategy="none", seed=3, verbose=0)

    command = [sys.executable, "-m", "tests.training_worker", "killable", "-", "--", *train_args(out)]

    def run(kill_at):
        env = subprocess_env(KERAS_CVT_KILL_AT=kill_at)
        # A rerun that never ends (zero steps left in an epoch of an endless dataset) fails here.
        return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    for kill_at, start in PHASES:
        killed = run(kill_at)
        output = killed.stdout + killed.stderr[-3000:]
        assert killed.returncode == -signal.SIGKILL, (kill_at, output)
        assert f"Starting at optimizer step {start}" in killed.stdout, (kill_at, output)
        if kill_at == RESUMED_IN_EPOCH_1:
            shutil.copytree(out, tmp_path / "resumed")
    # The last kill came before their removal: the two newest generations, each intact.
    backups = training.ResumableBackupAndRestore.backups(out / "backup")
    assert [os.path.basename(p) for p in backups] == ["backup-00002-00000000.weights.h5", "backup-00001-00000002.weights.h5"]
    assert all(atomic.verify(p) is None for p in backups)
    record = json.loads((out / "completed.json").read_text())
    assert record["optimizer_steps"] == 8
    with h5py.File(out / "checkpoints" / "best.weights.h5", "r") as f:
        assert record["best"] == pytest.approx(float(f.attrs["best"]))
    checkpoints = {p.name: digest(p) for p in (out / "checkpoints").iterdir()}

    # The runs that nothing kills need no TensorFlow of their own: examples/train.py runs here.
    train = load_example("train")
    capsys.readouterr()
    with pytest.warns(UserWarning, match="holds a completed run \\(8 optimizer steps"):
        model, _, _ = train.run(train.parse_args(train_args(out)))
    printed = capsys.readouterr().out
    assert "Starting at optimizer step" not in printed  # not trained again
    assert "Optimizer steps: 8" in printed and "Resumed at" not in printed
    assert printed.strip().splitlines()[-1].startswith("Validation top-1 ")
    assert int(model.optimizer.iterations.numpy()) == 8
    assert {p.name: digest(p) for p in (out / "checkpoints").iterdir()} == checkpoints
    assert os.listdir(out / "backup") == []
    assert leftovers(out) == []

    # The copy of the backup in epoch 1, run to the end: from its epoch, step and optimizer
    # state, to 2 x 4 optimizer steps.
    resumed = tmp_path / "resumed"
    assert train.main(train_args(resumed)) == 0
    printed = capsys.readouterr().out
    assert "Starting at optimizer step 6" in printed and "Resumed at epoch 1 step 2" in printed
    assert "Optimizer steps: 8" in printed
    assert printed.strip().splitlines()[-1].startswith("Validation top-1 ")
    assert json.loads((resumed / "completed.json").read_text())["optimizer_steps"] == 8
    assert os.listdir(resumed / "backup") == []
    assert (resumed / "checkpoints" / "last.weights.h5").is_file() and leftovers(resumed) == []


# ---------------------------------------------------------------------------------------------
# Rerun with other arguments, after completion, with restart.


class Crash(keras.callbacks.Callback):
    """Raises as optimizer step `at + 1` begins: a run that stopped with a backup behind it."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def on_train_batch_begin(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == self.at:
            raise RuntimeError("crash")


def arrays(n, classes=2, seed=0):
    rng = np.random.RandomState(seed)
    return rng.randint(0, 256, (n, 32, 32, 3)).astype(np.uint8), np.arange(n) % classes


def compiled(architecture, learning_rate=1e-3, classes=2, head_bias=None):
    model = training.build_model(architecture, classes, 32, drop_path_rate=0.0)
    if head_bias is not None:
        # Logits equal to the bias whatever the image: the validation accuracy is set by it.
        head = model.get_layer("predictions")
        head.kernel.assign(np.zeros(head.kernel.shape, "float32"))
        head.bias.assign(np.asarray(head_bias, "float32"))
    training.compile_model(model, training.make_optimizer(model, learning_rate))
    return model


def train_data(batch_size=4):
    images, labels = arrays(16)
    return training.train_dataset(
        tf.distribute.get_strategy(), training.array_source(images, labels, 2), 32, batch_size, seed=0
    )


@pytest.mark.slow
def test_a_rerun_with_other_arguments_or_another_model_is_refused_before_anything_is_loaded(tmp_path):
    out = str(tmp_path / "run")
    common = {"epochs": 2, "output_dir": out, "backup_every": 2, "verbose": 0}
    with pytest.raises(RuntimeError, match="crash"):
        training.fit(
            compiled(SMALL),
            train_data(),
            steps_per_epoch=4,
            parameters={"batch_size": 4},
            callbacks=[Crash(3)],
            **common,
        )
    backup = tmp_path / "run" / "backup" / "backup-00000-00000002.weights.h5"
    assert training.ResumableBackupAndRestore.backups(tmp_path / "run" / "backup") == [str(backup)]
    with h5py.File(backup, "r") as f:
        assert (int(f.attrs["epoch"]), int(f.attrs["step"])) == (0, 2)
    before = digest(backup)

    # Another batch size: fewer steps per epoch. Refused, saying what changed.
    with pytest.raises(ValueError) as error:
        training.fit(
            compiled(SMALL), train_data(8), steps_per_epoch=2, parameters={"batch_size": 8}, **common
        )
    message = str(error.value)
    assert "holds the backup of another run" in message
    assert "batch_size: 4 there, 8 here" in message and "steps_per_epoch: 4 there, 2 here" in message
    assert "--restart" in message

    # Another architecture: refused before Keras tries to load it ("objects could not be loaded").
    other = compiled(TINY)
    with pytest.raises(ValueError) as error:
        training.fit(other, train_data(), steps_per_epoch=4, parameters={"batch_size": 4}, **common)
    message = str(error.value)
    assert str(backup) in message and "another model" in message
    assert "stage1_block1" in message  # a weight TINY has and SMALL lacks (depths 1,2,2 vs 1,1,1)
    assert int(other.optimizer.iterations.numpy()) == 0 and not other.optimizer.built
    assert digest(backup) == before

    # The same arguments resume at the backup's step and end after 2 x 4 optimizer steps.
    model = compiled(SMALL)
    history, resumed = training.fit(
        model, train_data(), steps_per_epoch=4, parameters={"batch_size": 4}, **common
    )
    assert resumed == (0, 2) and len(history["loss"]) == 2
    assert int(model.optimizer.iterations.numpy()) == 8
    assert os.listdir(tmp_path / "run" / "backup") == []


@pytest.mark.slow
def test_a_completed_run_is_kept_and_best_is_never_replaced_by_a_worse_model(tmp_path):
    out = tmp_path / "run"
    images, _ = arrays(4)
    # Validation: 3 of 4 images of class 0. A head preferring class 0 scores 0.75, class 1 0.25.
    val_data = training.eval_dataset(
        tf.distribute.get_strategy(), training.array_source(images, [0, 0, 0, 1], 2), 32, 4, crop_ratio=None
    )
    common = {
        "epochs": 2,
        "steps_per_epoch": 2,
        "output_dir": str(out),
        "validation_data": val_data,
        "verbose": 0,
    }
    first = compiled(SMALL, learning_rate=0.0, head_bias=[5.0, 0.0])  # no learning: the bias rules
    history, _ = training.fit(first, train_data(), **common)
    assert history["val_top1"] == [0.75, 0.75]
    record = json.loads((out / "completed.json").read_text())
    assert record["optimizer_steps"] == 4 and record["best"] == 0.75
    best, last = out / "checkpoints" / "best.weights.h5", out / "checkpoints" / "last.weights.h5"
    files = {best: digest(best), last: digest(last)}
    final = {v.path: v.numpy() for v in first.weights}

    # The same command again: not trained again, checkpoints untouched, the final weights loaded.
    again = compiled(SMALL, learning_rate=0.0, head_bias=[0.0, 5.0])
    with pytest.warns(
        UserWarning, match="holds a completed run \\(4 optimizer steps, best val_top1 0.7500\\)"
    ):
        history, resumed = training.fit(again, train_data(), **common)
    assert history == {} and resumed == (2, 0)
    assert {path: digest(path) for path in files} == files
    assert int(again.optimizer.iterations.numpy()) == 4
    for v in again.weights:
        np.testing.assert_array_equal(v.numpy(), final[v.path], err_msg=v.path)

    # With other arguments: refused, saying what changed.
    with pytest.raises(
        ValueError, match="holds a completed run, which differs from this one in\n  epochs: 2 there, 3 here"
    ):
        training.fit(compiled(SMALL), train_data(), **{**common, "epochs": 3})
    assert {path: digest(path) for path in files} == files

    # restart=True trains again; its model scores 0.25, so `best` keeps the first run's.
    worse = compiled(SMALL, learning_rate=0.0, head_bias=[0.0, 5.0])
    history, resumed = training.fit(worse, train_data(), restart=True, **common)
    assert resumed == (0, 0) and history["val_top1"] == [0.25, 0.25]
    assert int(worse.optimizer.iterations.numpy()) == 4
    assert digest(best) == files[best] and digest(last) != files[last]
    assert json.loads((out / "completed.json").read_text())["best"] == 0.75
    with h5py.File(best, "r") as f:
        assert float(f.attrs["best"]) == 0.75 and f.attrs["monitor"] == "val_top1"


@pytest.mark.slow
def test_checkpoints_of_another_model_are_refused_even_on_restart(tmp_path):
    out = str(tmp_path / "run")
    training.fit(compiled(TINY), train_data(), epochs=1, steps_per_epoch=1, output_dir=out, verbose=0)
    last = tmp_path / "run" / "checkpoints" / "last.weights.h5"
    before = digest(last)
    with pytest.raises(ValueError, match="last.weights.h5 holds weights of another model"):
        training.fit(
            compiled(SMALL),
            train_data(),
            epochs=1,
            steps_per_epoch=1,
            output_dir=out,
            restart=True,
            verbose=0,
        )
    assert digest(last) == before and (tmp_path / "run" / "completed.json").is_file()


# ---------------------------------------------------------------------------------------------
# Image folders.


def test_unreadable_images_are_listed_in_one_error_or_skipped_with_a_warning(tmp_path):
    root = write_image_folder(tmp_path / "images", per_class=5, classes=2, size=(16, 16))
    truncated = root / "class_0" / "3.png"
    truncated.write_bytes(truncated.read_bytes()[:60])
    text = root / "class_1" / "notes.jpg"
    text.write_text("not an image")

    with pytest.raises(ValueError) as error:
        training.image_folder_source(str(root))
    message = str(error.value)
    assert "2 of 11 images" in message and "--skip-bad-images" in message
    assert f"{truncated}: Invalid PNG data" in message and f"{text}: Unknown image file format" in message
    assert "class_0/0.png" not in message

    with pytest.warns(UserWarning) as warned:
        source = training.image_folder_source(str(root), skip_bad_images=True)
    assert str(truncated) in str(warned[0].message) and str(text) in str(warned[0].message)
    assert source.num_examples == 9
    paths, labels = zip(*source.load(0, 1, False).as_numpy_iterator())
    assert sorted(p.decode() for p in paths) == sorted(str(p) for p in root.rglob("*.png") if p != truncated)
    # Every remaining image decodes: the pipeline reads them all.
    assert all(source.decode(p).shape[-1] == 3 for p in paths)

    # "both": training and validation from one check, split as without the bad files.
    with pytest.warns(UserWarning):
        train, val = training.image_folder_source(str(root), "both", 0.4, skip_bad_images=True)
    assert train.num_examples + val.num_examples == 9 and val.num_examples == 4
    text.unlink()
    truncated.write_bytes(b"")  # an empty file is unreadable too
    with pytest.raises(ValueError, match="(?s)1 of 10 images .*3.png: Input is empty.\n"):
        training.image_folder_source(str(root), "both", 0.4)


def test_find_unreadable_images_reports_every_bad_file_of_a_folder(tmp_path):
    root = write_image_folder(tmp_path / "images", per_class=40, classes=2, size=(8, 8))
    bad = sorted(root.glob("class_1/*.png"))[::3]
    for path in bad:
        path.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    paths, _, _ = training.list_image_folder(str(root))
    found = training.find_unreadable_images(paths)
    assert [path for _, path, _ in found] == [str(p) for p in sorted(bad, key=lambda p: paths.index(str(p)))]
    assert all(paths[index] == path for index, path, _ in found)
    assert all(reason and reason != "(not decoded again)" for _, _, reason in found)


def test_an_empty_class_folder_or_a_single_class_is_an_error(tmp_path):
    root = write_image_folder(tmp_path / "images", per_class=2, classes=2, size=(8, 8))
    (root / "class_9").mkdir()
    (root / "class_9" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match="class folder\\(s\\) without images .*class_9"):
        training.image_folder_source(str(root))
    single = write_image_folder(tmp_path / "single", per_class=2, classes=1, size=(8, 8))
    with pytest.raises(ValueError, match="single class \\('class_0'\\)"):
        training.image_folder_source(str(single))


def test_train_py_checks_the_image_folder_before_building_a_model(tmp_path):
    root = write_image_folder(tmp_path / "images", per_class=5, classes=2, size=(16, 16))
    (root / "class_1" / "fake.jpg").write_text("text")
    train = load_example("train")
    args = train.parse_args([*SMALL_ARGS, "--image-folder", str(root), "--output-dir", str(tmp_path / "run")])
    with pytest.raises(ValueError, match="fake.jpg"):
        train.sources(args, multi_worker=False)
    args.skip_bad_images = True
    with pytest.warns(UserWarning, match="fake.jpg"):
        train_source, val_source = train.sources(args, multi_worker=False)
    assert train_source.num_examples + val_source.num_examples == 10
    assert not os.path.exists(tmp_path / "run")


def test_train_py_reports_a_refusal_in_one_message_without_a_traceback(tmp_path, capsys):
    root = write_image_folder(tmp_path / "images", per_class=5, classes=2, size=(16, 16))
    (root / "class_1" / "fake.jpg").write_text("text")
    train = load_example("train")
    status = train.main([*SMALL_ARGS, "--image-folder", str(root), "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("train.py: error: ") and "fake.jpg" in err
    assert "Traceback" not in err
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize("example", ["train", "evaluate"])
def test_a_dataset_without_tensorflow_datasets_is_one_line_naming_the_extra(example, tmp_path, capsys, monkeypatch):
    # As if tensorflow-datasets were not installed: importing it raises ImportError.
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    script = load_example(example)
    arguments = [*SMALL_ARGS, "--dataset", "tf_flowers", "--output-dir", str(tmp_path / "run")]
    if example == "evaluate":
        # A pretrained name: its classes are known without a download.
        arguments = ["--dataset", "tf_flowers", "--model", "cvt13", "--weights", "imagenet"]
    status = script.main(arguments)
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith(f"{example}.py: error: ") and "keras-cvt[datasets]" in err
    assert "Traceback" not in err and err.count("\n") == 1
