"""`fit` that survives being killed anywhere: exact resume, completed runs kept, no worse `best`.

Every file is published with `keras_cvt.atomic` (written under a temporary name, renamed when
complete) and carries a record of the run that wrote it (its defining parameters and the
model's weight layout), so a rerun can tell whether it is the same run before loading anything.
"""

import contextlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
import warnings

import h5py
import keras
import tensorflow as tf

from keras_cvt import atomic, locks
from keras_cvt.arguments import check_integer
from keras_cvt.training.preemption import PreemptionCallback
from keras_cvt.training.strategy import is_chief, task

MONITOR = "val_top1"
COMPLETED = "completed.json"
LAST = "last.weights.h5"
BEST = "best.weights.h5"
RESERVED_PARAMETERS = ("epochs", "steps_per_epoch")


class SyncBatchNormStatistics(keras.callbacks.Callback):
    """Averages BatchNormalization moving statistics over all replicas (and workers).

    Under `tf.distribute`, Keras 3 updates each replica's copy of a BatchNormalization's
    moving mean and variance from that replica's own sub-batch and never reconciles them (they
    are mirrored variables without aggregation): the replicas drift apart, each evaluates with
    its own, a checkpoint stores replica 0's, and under `MultiWorkerMirroredStrategy` each
    worker saves different ones. tf.keras averaged them whenever they were read; this callback
    does the same at the points where they are read: before validation, at the end of each
    epoch (before the checkpoints that follow it in the callback list), before each backup
    (`ResumableBackupAndRestore(before_save=...)`) and at the end of training. Normalisation
    during training stays per replica, as in the original (PyTorch DDP without SyncBatchNorm).
    """

    STATISTICS = ("moving_mean", "moving_variance")

    def __init__(self, strategy):
        super().__init__()
        self.strategy = strategy
        self._sync = None

    def sync(self):
        if self._sync is None:
            variables = [v for v in self.model.non_trainable_variables if v.name in self.STATISTICS]

            def average():
                context = tf.distribute.get_replica_context()
                means = context.all_reduce(
                    tf.distribute.ReduceOp.MEAN, [tf.identity(v.value) for v in variables]
                )
                for variable, mean in zip(variables, means):
                    variable.assign(mean)

            def run_average():
                self.strategy.run(average)

            # A named function: AutoGraph reads a function's source, and cannot tell two
            # lambdas on one line apart (it warned "could not transform" on every run).
            self._sync = tf.function(run_average) if variables else None
        if self._sync is not None:
            self._sync()

    def on_test_begin(self, logs=None):
        self.sync()

    def on_epoch_end(self, epoch, logs=None):
        self.sync()

    def on_train_end(self, logs=None):
        self.sync()


def model_signature(model):
    """The weight layout of `model` (`{"name", "weights": {path: shape}}`), recorded in its files."""
    return {"name": model.name, "weights": {v.path: list(v.shape) for v in model.weights}}


def _model_difference(recorded, current):
    old, new = recorded["weights"], current["weights"]
    reshaped = [p for p in old if p in new and old[p] != new[p]]
    missing = [p for p in old if p not in new]
    extra = [p for p in new if p not in old]
    details = [f"{p} is {tuple(old[p])} there, {tuple(new[p])} here" for p in reshaped[:3]]
    if missing:
        details.append(f"{len(missing)} of its weights are not in this model, e.g. {missing[0]}")
    if extra:
        details.append(f"this model has {len(extra)} weights it lacks, e.g. {extra[0]}")
    return (
        f"another model: {recorded['name']!r} with {len(old)} weights there, "
        f"{current['name']!r} with {len(new)} here ({'; '.join(details)})"
    )


def _differences(recorded_run, recorded_model, run, model):
    """Lines saying how this run (`run`, `model`) differs from a recorded one; [] for the same run."""
    lines = []
    if recorded_model["weights"] != model["weights"]:
        lines.append(_model_difference(recorded_model, model))
    for key in sorted(set(recorded_run) | set(run)):
        old, new = recorded_run.get(key, "(not recorded)"), run.get(key, "(not given)")
        if old != new:
            lines.append(f"{key}: {old!r} there, {new!r} here")
    return lines


def _read_attributes(path, what):
    """The attributes of one of our weights files; None when there is no file."""
    if not os.path.exists(path):
        return None
    try:
        with h5py.File(path, "r") as f:
            return dict(f.attrs)
    except OSError as error:
        raise ValueError(
            f"{what} {path!r} cannot be read ({error}): delete it (or use another output directory)"
        ) from error


def _recorded(attributes, path, what):
    """`(run, model)` recorded in a file's attributes."""
    try:
        return json.loads(attributes["run"]), json.loads(attributes["model"])
    except KeyError:
        raise ValueError(
            f"{what} {path!r} has no record of the run that wrote it (written by another program or "
            "an older keras_cvt): move it away or use another output directory"
        ) from None


def build_optimizer(model):
    """Creates the variables of `model`'s optimizer (under the model's strategy) unless they exist."""
    if model.optimizer is not None and not model.optimizer.built:
        with model.distribute_strategy.scope():
            model.optimizer.build(model.trainable_variables)


def save_weights(model, path, attributes):
    """`model.save_weights(path)` published with `atomic.publish_verified`, `attributes` on its root.

    The file system must first grant the file's size (`atomic.reserve_for_variables`): a full disk is
    then a `keras_cvt.atomic.WriteError` naming the file, with the previous file kept, instead
    of HDF5's crash on closing a file it could not write.
    """
    variables = list(model.weights)
    if model.optimizer is not None and model.optimizer.built:
        variables += list(model.optimizer.variables)
    with atomic.publish_verified(path) as temporary:
        extra = sum(len(str(value)) for value in attributes.values())
        atomic.reserve_for_variables(temporary, variables, previous=path, extra=extra)
        model.save_weights(temporary)
        with h5py.File(temporary, "a") as f:
            for key, value in attributes.items():
                f.attrs[key] = value


def _check_intact(path, what):
    """Refuses a file of ours that no longer matches its size and SHA-256 record."""
    problem = atomic.verify(path)
    if problem is not None:
        raise ValueError(
            f"{what} {path} is damaged: {problem}. Move it away (with {atomic.record_path(path)}), "
            "or use another output directory"
        )


class Checkpoints(keras.callbacks.Callback):
    """`last.weights.h5` after every epoch; `best.weights.h5` when `monitor` beats every value so far.

    Both are published atomically and record the epoch, the run and the model. The best file
    also records its value, which is the bar for the next one: `fit` reads it back on every
    start (a resume, or a restart in the same directory), so `best` is never replaced by a
    worse model. Higher is better (`val_top1`).
    """

    def __init__(self, directory, attributes, monitor=None, best=None):
        super().__init__()
        self.directory = directory
        self.attributes = attributes
        self.monitor = monitor
        self.best = best

    def on_epoch_end(self, epoch, logs=None):
        attributes = {**self.attributes, "epoch": epoch + 1}
        save_weights(self.model, os.path.join(self.directory, LAST), attributes)
        value = (logs or {}).get(self.monitor) if self.monitor else None
        if value is not None and (self.best is None or float(value) > self.best):
            self.best = float(value)
            attributes.update(monitor=self.monitor, best=self.best)
            save_weights(self.model, os.path.join(self.directory, BEST), attributes)


class ResumableBackupAndRestore(keras.callbacks.Callback):
    """Backups that resume at the same epoch *and step*; `fit` restores and runs the rest.

    Keras' `BackupAndRestore` restarts the interrupted epoch from its first step, so a job
    killed mid-epoch ends with more optimizer steps than an uninterrupted one. This one records
    the epoch and the step within it next to the weights and optimizer state, every
    `backup_every` steps and at the end of every epoch, after the checkpoints (a kill between
    them repeats the epoch's end rather than losing its checkpoints). A backup due on an
    epoch's last step is left to the end-of-epoch one, which follows validation: resuming
    there would leave no step of the epoch to run.

    Each backup is one file, `backup-<epoch>-<step>.weights.h5`, published atomically with a
    size and SHA-256 record (`keras_cvt.atomic.publish_verified`); the two newest are kept. A
    restore takes the newest that matches its record: a damaged one is refused by name (and
    renamed `<name>.damaged`), and the one before it is used, with a warning saying so.

    Args:
        backup_dir: where backups are read from.
        steps_per_epoch: steps of a full epoch.
        backup_every: steps between backups (0: at the end of each epoch only).
        write_dir: where this process writes its backups (defaults to `backup_dir`): under
            `MultiWorkerMirroredStrategy` every worker saves (TensorFlow's advice), but only
            the chief into `backup_dir`, which all workers restore from (so it must be shared).
        attributes: recorded with every backup (`fit`: the run and the model).
        before_save: called before each backup (e.g. `SyncBatchNormStatistics.sync`).
    """

    GENERATIONS = 2
    PATTERN = re.compile(r"backup-(\d+)-(\d+)\.weights\.h5")

    def __init__(
        self, backup_dir, steps_per_epoch, backup_every=0, write_dir=None, attributes=None, before_save=None
    ):
        super().__init__()
        self.backup_dir = backup_dir
        self.steps_per_epoch = steps_per_epoch
        self.backup_every = backup_every
        self.write_dir = write_dir or backup_dir
        self.attributes = dict(attributes or {})
        self.before_save = before_save
        self.step_offset = 0
        self.last_saved = None
        self._saved_at = None
        self._epoch = 0
        self._step = 0
        self._steps_since_backup = 0

    @staticmethod
    def filename(epoch, step):
        return f"backup-{epoch:05d}-{step:08d}.weights.h5"

    @classmethod
    def backups(cls, directory):
        """Paths of the backups in `directory`, newest (by epoch, then step) first."""
        found = []
        if os.path.isdir(directory):
            for name in os.listdir(directory):
                match = cls.PATTERN.fullmatch(name)
                if match:
                    found.append(((int(match[1]), int(match[2])), os.path.join(directory, name)))
        return [path for _, path in sorted(found, reverse=True)]

    @classmethod
    def remove_all(cls, directory):
        for path in cls.backups(directory):
            atomic.remove_verified(path)

    @property
    def current(self):
        """`(epoch, step)` training has reached."""
        return self._epoch, self._step

    def restore(self, model, run, epochs):
        """Loads the newest intact backup into `model`; returns `(epoch, step)`, `(0, 0)` without one.

        The backup's record is checked against `run` (and the model's weight layout) first:
        a backup of another run is refused with what differs, before anything is loaded.
        """
        candidates = self.backups(self.backup_dir)
        refused = []
        for path in candidates:
            problem = atomic.verify(path)
            if problem is None:
                break
            refused.append(f"{path}: {problem}")
            os.replace(path, path + ".damaged")
        else:
            if refused:
                raise ValueError(
                    "every backup is damaged, refused:\n  " + "\n  ".join(refused) + "\nTo train from step 0, "
                    "pass restart=True (--restart); the damaged files were renamed *.damaged"
                )
            return 0, 0
        if refused:
            warnings.warn(
                "refused the damaged backup " + "; ".join(refused) + f" (renamed *.damaged): resuming from the "
                f"previous one, {path}",
                stacklevel=3,
            )
        attributes = _read_attributes(path, "the backup")
        recorded_run, recorded_model = _recorded(attributes, path, "the backup")
        differences = _differences(recorded_run, recorded_model, run, model_signature(model))
        if differences:
            raise ValueError(
                f"{path} holds the backup of another run, which differs from this one in\n  "
                + "\n  ".join(differences)
                + "\nTo resume it, run again with its arguments (its model, batch size, epochs, ...); "
                "to discard it and start this run from step 0, pass restart=True (--restart); "
                "or use another output directory."
            )
        epoch, step = int(attributes["epoch"]), int(attributes["step"])
        if not (0 <= step < self.steps_per_epoch and 0 <= epoch <= epochs and (epoch < epochs or step == 0)):
            raise ValueError(
                f"{path} says epoch {epoch} step {step}, outside {epochs} epochs of "
                f"{self.steps_per_epoch} steps: delete it, or pass restart=True (--restart)"
            )
        build_optimizer(model)
        model.load_weights(path)
        return epoch, step

    def on_train_begin(self, logs=None):
        self._step = self.step_offset
        self._steps_since_backup = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        step = self.step_offset + batch + 1
        self._steps_since_backup += step - self._step
        self._step = step
        due = self.backup_every and self._steps_since_backup >= self.backup_every
        if due and step < self.steps_per_epoch:
            self._save(self._epoch, step)

    def on_epoch_end(self, epoch, logs=None):
        self.step_offset = self._step = 0
        self._epoch = epoch + 1
        self._save(epoch + 1, 0)

    def save_now(self):
        """Backs up at the current epoch and step (mid-epoch) unless done; returns the path."""
        if self._saved_at == self.current:
            return self.last_saved
        return self._save(*self.current)

    def _save(self, epoch, step):
        if self.before_save is not None:
            self.before_save()
        self._steps_since_backup = 0
        path = os.path.join(self.write_dir, self.filename(epoch, step))
        save_weights(self.model, path, {**self.attributes, "epoch": epoch, "step": step})
        self.last_saved, self._saved_at = path, (epoch, step)
        for old in self.backups(self.write_dir)[self.GENERATIONS :]:
            atomic.remove_verified(old)
        return path


def read_completed(output_dir):
    """The record `fit` wrote when the run in `output_dir` completed, or None."""
    path = os.path.join(output_dir, COMPLETED)
    if not os.path.exists(path):
        return None
    _check_intact(path, "the completion record")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path!r} cannot be read ({error}): delete it to train again") from error


def _check_checkpoints(directory, signature, monitor):
    """The recorded value of `best.weights.h5` (None without one); refuses another model's files."""
    best = None
    for name in (LAST, BEST):
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            continue
        _check_intact(path, "the checkpoint")
        attributes = _read_attributes(path, "the checkpoint")
        _, recorded_model = _recorded(attributes, path, "the checkpoint")
        if recorded_model["weights"] != signature["weights"]:
            raise ValueError(
                f"{path} holds weights of {_model_difference(recorded_model, signature)}: "
                f"use another output directory, or move {directory} away"
            )
        if name == BEST and monitor is not None:
            if attributes.get("monitor") != monitor:
                raise ValueError(
                    f"{path} records no {monitor} to compare new models with: move it away "
                    "or use another output directory"
                )
            best = float(attributes["best"])
    return best


def _as_json(parameters):
    try:
        return json.loads(json.dumps(dict(parameters or {})))
    except TypeError as error:
        raise TypeError(
            f"`parameters` must be a JSON-serialisable dict, got {parameters!r}: {error}"
        ) from None


def fit(
    model,
    train_data,
    *,
    epochs,
    steps_per_epoch,
    output_dir,
    strategy=None,
    validation_data=None,
    validation_steps=None,
    backup_every=0,
    keep_backup=False,
    restart=False,
    parameters=None,
    callbacks=(),
    verbose="auto",
):
    """`model.fit` that can be killed anywhere and run again, writing under `output_dir`.

    With several replicas, BatchNorm moving statistics are averaged over them whenever they are
    read (`SyncBatchNormStatistics`). Writes, on the chief only (other workers write to a
    temporary directory that is deleted at the end, as TensorFlow recommends), each file
    published atomically with a record of the run (`epochs`, `steps_per_epoch`, `parameters`)
    and of the model's weight layout:

    - `backup/backup-<epoch>-<step>.weights.h5` (the two newest): weights, optimizer state,
      epoch and step, every `backup_every` steps (0: at the end of each epoch only; always at
      the end of each epoch, and at the step where SIGTERM or SIGINT arrived, after which
      `Preempted` is raised: `keras_cvt.training.preemption`). Run again with the same
      arguments after a kill at any point (mid-step, during a backup or checkpoint write,
      during validation), it resumes at the backup's epoch and step with its optimizer state
      and ends after the same number of optimizer steps as an uninterrupted run. A backup of another run (other `epochs`, `steps_per_epoch`,
      `parameters`, or another model) is refused with what differs, before anything is loaded.
      A damaged backup is refused by name and the one before it used. Deleted when training
      completes unless `keep_backup`.
    - `checkpoints/last.weights.h5` after every epoch, `checkpoints/best.weights.h5` when the
      validation top-1 accuracy (with `validation_data`) beats the best value recorded in
      that file, so it is never replaced by a worse model, across resumes and restarts.
      Checkpoints of another model are refused.
    - `completed.json` when training completes: the optimizer steps, the best value and the
      run's record. Run again, a completed run is not trained again: its checkpoints are left
      as they are, the model gets the final weights (`last.weights.h5`) and a warning says so.
    - `logs/`: TensorBoard logs (when the `tensorboard` package is installed).

    Every weights file and `completed.json` carries a size and SHA-256 record
    (`<file>.sha256.json`, `keras_cvt.atomic.publish_verified`), checked before it is used:
    a damaged checkpoint is refused by name. The chief holds `output_dir`'s lock
    (`keras_cvt.locks`, `<output_dir>/.lock`) throughout: a second process training there
    stops at once with `LockedError`, naming the process that holds it; staging files that a
    killed writer left are removed first. A full disk is a `keras_cvt.atomic.WriteError`
    naming the file, with the previous files kept.

    Args:
        parameters: a JSON-serialisable dict of what else defines the run (batch size,
            learning rate, image size, ...), recorded and compared on every rerun.
        restart: discard the backup and the completion record and train from step 0 (the
            checkpoints stay; `best` is replaced only by a better model).

    Returns `(history, (epoch, step))`: the merged `History.history` of this run, and where it
    resumed: `(0, 0)` for a fresh start, `(epochs, 0)` with an empty history for a run that had
    already completed.
    """
    epochs = check_integer("epochs", epochs, 1)
    steps_per_epoch = check_integer("steps_per_epoch", steps_per_epoch, 1)
    backup_every = check_integer("backup_every", backup_every, 0)
    run = _as_json(parameters)
    reserved = [key for key in RESERVED_PARAMETERS if key in run]
    if reserved:
        raise ValueError(f"`parameters` must not hold {reserved}: they are fit's own arguments")
    run.update(epochs=int(epochs), steps_per_epoch=int(steps_per_epoch))
    signature = model_signature(model)
    attributes = {"run": json.dumps(run), "model": json.dumps(signature)}
    strategy = strategy or tf.distribute.get_strategy()
    chief = is_chief(strategy)
    with run_directory_lock(output_dir, strategy):
        return _fit(
            model, train_data, epochs, steps_per_epoch, output_dir, strategy, chief, run, signature,
            attributes, validation_data, validation_steps, backup_every, keep_backup, restart,
            callbacks, verbose,
        )


@contextlib.contextmanager
def run_directory_lock(output_dir, strategy=None):
    """Holds `output_dir`'s lock on the chief (`keras_cvt.locks`), and removes dead writers' staging.

    `fit` takes it; a program that prepares a run before `fit` (examples/train.py) takes it
    first, so that a second process stops before loading data or building a model (`fit`
    then nests in it).
    """
    if not is_chief(strategy or tf.distribute.get_strategy()):
        yield
        return
    with locks.exclusive(output_dir, "training run directory", inside=True):
        for directory in (output_dir, *(os.path.join(output_dir, d) for d in ("checkpoints", "backup"))):
            atomic.remove_stale_staging(directory)
        yield


def _fit(
    model, train_data, epochs, steps_per_epoch, output_dir, strategy, chief, run, signature,
    attributes, validation_data, validation_steps, backup_every, keep_backup, restart, callbacks, verbose,
):
    monitor = MONITOR if validation_data is not None else None
    checkpoint_dir = os.path.join(output_dir, "checkpoints")
    backup_dir = os.path.join(output_dir, "backup")
    completed_path = os.path.join(output_dir, COMPLETED)

    # Everything is checked before anything is written or deleted.
    best = _check_checkpoints(checkpoint_dir, signature, monitor)
    completed = None if restart else read_completed(output_dir)
    if completed is not None:
        differences = _differences(completed["run"], completed["model"], run, signature)
        if differences:
            raise ValueError(
                f"{output_dir} holds a completed run, which differs from this one in\n  "
                + "\n  ".join(differences)
                + "\nIts checkpoints are left as they are. To train this run there, pass "
                "restart=True (--restart); or use another output directory."
            )
        return _completed(model, output_dir, completed, epochs, keep_backup, chief)
    if chief:
        if restart:
            atomic.remove_verified(completed_path)
            ResumableBackupAndRestore.remove_all(backup_dir)
        write_root = output_dir
    else:
        task_type, task_id = task(strategy)
        write_root = tempfile.mkdtemp(prefix=f"keras_cvt_{task_type}{task_id}_")
    standard = []
    before_save = None
    if strategy.num_replicas_in_sync > 1:
        sync = SyncBatchNormStatistics(strategy)
        standard.append(sync)  # first: the callbacks after it save what it averaged
        before_save = sync.sync
    checkpoints = Checkpoints(os.path.join(write_root, "checkpoints"), attributes, monitor, best)
    backup = ResumableBackupAndRestore(
        backup_dir,
        steps_per_epoch,
        backup_every,
        write_dir=os.path.join(write_root, "backup"),
        attributes=attributes,
        before_save=before_save,
    )
    preemption = PreemptionCallback(backup, strategy)
    # The end-of-epoch backup after the checkpoints it vouches for; pre-emption after the backup.
    standard += [checkpoints, backup, preemption]
    if importlib.util.find_spec("tensorboard") is not None:
        standard.append(keras.callbacks.TensorBoard(os.path.join(write_root, "logs")))
    else:
        warnings.warn("TensorBoard is not installed (pip install tensorboard): no logs are written")
    all_callbacks = standard + list(callbacks)

    resumed = epoch, step = (0, 0) if restart else backup.restore(model, run, epochs)
    # Before `model.fit` (after restore's checks, which refuse before anything is built): an
    # optimizer that creates its variables while the first step is traced makes tf.function
    # trace the whole train step a second time, which on CPU about doubles the first epoch.
    build_optimizer(model)
    history = {}

    def fit_epochs(first_epoch, last_epoch, steps):
        h = model.fit(
            train_data,
            initial_epoch=first_epoch,
            epochs=last_epoch,
            steps_per_epoch=steps,
            validation_data=validation_data,
            validation_steps=validation_steps,
            callbacks=all_callbacks,
            verbose=verbose,
            shuffle=False,
        )
        for key, values in h.history.items():
            history.setdefault(key, []).extend(values)

    preemption.install()
    try:
        if step:
            # The rest of the interrupted epoch (at least one step), then the following epochs.
            backup.step_offset = step
            fit_epochs(epoch, epoch + 1, steps_per_epoch - step)
            epoch += 1
        if epoch < epochs:
            fit_epochs(epoch, epochs, steps_per_epoch)
        if chief:
            record = {
                "optimizer_steps": int(model.optimizer.iterations.numpy()),
                "monitor": monitor,
                "best": checkpoints.best,
                "run": run,
                "model": signature,
            }
            with atomic.publish_verified(completed_path) as temporary, open(temporary, "wb") as f:
                f.write(json.dumps(record, indent=1).encode())
        if not keep_backup:
            ResumableBackupAndRestore.remove_all(backup.write_dir)
    finally:
        preemption.uninstall()
        if not chief:
            shutil.rmtree(write_root, ignore_errors=True)
    return history, resumed


def _completed(model, output_dir, record, epochs, keep_backup, chief):
    last = os.path.join(output_dir, "checkpoints", LAST)
    if not os.path.exists(last):
        raise ValueError(
            f"{output_dir} holds a completed run but not its {last}: pass restart=True (--restart) "
            "to train again, or use another output directory"
        )
    _check_intact(last, "the checkpoint")
    build_optimizer(model)
    model.load_weights(last)
    if chief and not keep_backup:
        # Left by a kill between the completion record and their removal.
        ResumableBackupAndRestore.remove_all(os.path.join(output_dir, "backup"))
    best = f", best {record['monitor']} {record['best']:.4f}" if record["best"] is not None else ""
    warnings.warn(
        f"{output_dir} holds a completed run ({record['optimizer_steps']} optimizer steps{best}): "
        "not training again; its checkpoints are left as they are and the model has its last "
        "weights. Pass restart=True (--restart) to train again, or use another output directory.",
        stacklevel=3,
    )
    return {}, (epochs, 0)


def evaluate(model, dataset, steps=None):
    """`(top1, top5)` of a model compiled with `compile_model` (or `metrics()`) on `dataset`
    (`steps` batches: `keras_cvt.training.eval_steps`, for a distributed dataset whose length
    Keras cannot read, or all of it)."""
    results = model.evaluate(dataset, steps=steps, return_dict=True, verbose=0)
    return float(results["top1"]), float(results["top5"])
