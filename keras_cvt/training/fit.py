"""`fit` with fault tolerance (resume at the same epoch and step), checkpoints and logs."""

import importlib.util
import os
import shutil
import tempfile
import warnings

import h5py
import keras
import tensorflow as tf

from keras_cvt.training.strategy import is_chief, task


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

            self._sync = tf.function(lambda: self.strategy.run(average)) if variables else (lambda: None)
        self._sync()

    def on_test_begin(self, logs=None):
        self.sync()

    def on_epoch_end(self, epoch, logs=None):
        self.sync()

    def on_train_end(self, logs=None):
        self.sync()


class ResumableBackupAndRestore(keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore` that resumes at the same epoch *and step*.

    Keras' callback restores the weights and optimizer state of its last backup but restarts
    the interrupted epoch from its first step, so a job killed in the middle of an epoch ends
    with more optimizer steps than an uninterrupted one (and a learning rate schedule ahead of
    its epochs). This one records the epoch and the step within it and, through `fit()` below,
    runs only the interrupted epoch's remaining steps. Besides:

    - Each backup is written to a temporary file and renamed, so a kill while writing leaves
      the previous backup intact; the epoch and step live inside the same file, so the state
      is never half old, half new.
    - `write_dir` separates where backups are written from where they are read: under
      `MultiWorkerMirroredStrategy` every worker saves (TensorFlow's advice), but only the
      chief into `backup_dir`, which all workers restore from (so it must be shared).
    - A backup is also written at the end of every epoch; the backup is deleted by `fit()`
      when training completes (`delete_checkpoint`), not at the end of each `model.fit`.
    - It remembers the best value of `monitor`, so the "best" checkpoint survives a restart.

    Args:
        backup_dir: where backups are read from.
        save_freq: `"epoch"` or a number of steps between backups.
        delete_checkpoint: delete the backup when training completes.
        write_dir: where this process writes its backups (defaults to `backup_dir`).
        monitor, mode: the metric (e.g. `"val_top1"`, `"max"`) whose best value to remember.
        before_save: called before each backup (e.g. `SyncBatchNormStatistics.sync`).
    """

    FILENAME = "latest.weights.h5"

    def __init__(
        self,
        backup_dir,
        save_freq="epoch",
        delete_checkpoint=True,
        write_dir=None,
        monitor=None,
        mode="max",
        before_save=None,
    ):
        super().__init__(backup_dir, save_freq=save_freq, delete_checkpoint=delete_checkpoint)
        self.write_dir = write_dir or backup_dir
        self.before_save = before_save
        self.monitor = monitor
        self.mode = mode
        self.best = None
        self.step_offset = 0
        self._step_in_epoch = 0
        self._restored = False

    @property
    def read_path(self):
        return os.path.join(self.backup_dir, self.FILENAME)

    @property
    def write_path(self):
        return os.path.join(self.write_dir, self.FILENAME)

    def restore(self, model=None):
        """Loads the last backup into the model; returns `(epoch, step)` to resume at."""
        model = model or self.model
        self._restored = True
        if not tf.io.gfile.exists(self.read_path):
            return 0, 0
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(self.read_path)
        with h5py.File(self.read_path, "r") as f:
            epoch, step = int(f.attrs["epoch"]), int(f.attrs["step"])
            self.best = float(f.attrs["best"]) if "best" in f.attrs else None
        self._current_epoch = epoch
        return epoch, step

    def on_train_begin(self, logs=None):
        if not self._restored:
            # Used with a plain `model.fit`: resume at the epoch (Keras' behaviour).
            epoch, _ = self.restore()
            self.model._initial_epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        # Keras only sets this at the end of an epoch, so a resumed run's first mid-epoch
        # backup would be labelled with the wrong epoch.
        self._current_epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self._step_in_epoch = self.step_offset + batch + 1
        super().on_train_batch_end(batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor) if self.monitor else None
        if value is not None and (
            self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        ):
            self.best = float(value)
        self.step_offset = 0
        self._step_in_epoch = 0
        self._current_epoch = epoch + 1
        self._last_batch_seen = 0
        self._save_model()

    def on_train_end(self, logs=None):
        pass

    def _save_model(self):
        if self.before_save is not None:
            self.before_save()
        tf.io.gfile.makedirs(self.write_dir)
        temporary = os.path.join(self.write_dir, "incomplete.weights.h5")
        self.model.save_weights(temporary, overwrite=True)
        with h5py.File(temporary, "a") as f:
            f.attrs["epoch"] = self._current_epoch
            f.attrs["step"] = self._step_in_epoch
            if self.best is not None:
                f.attrs["best"] = self.best
        os.replace(temporary, self.write_path)

    def finish(self):
        """Deletes this process's backup if `delete_checkpoint` (training has completed)."""
        if self.delete_checkpoint and tf.io.gfile.exists(self.write_path):
            tf.io.gfile.remove(self.write_path)


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
    callbacks=(),
    verbose="auto",
):
    """`model.fit` with fault tolerance, checkpoints and TensorBoard logs under `output_dir`.

    With several replicas, BatchNorm moving statistics are averaged over them whenever they are
    read (`SyncBatchNormStatistics`). Writes, on the chief only (other workers write to a
    temporary directory that is deleted at the end, as TensorFlow recommends):

    - `backup/latest.weights.h5`: weights, optimizer state, epoch and step, every
      `backup_every` steps (0: at the end of each epoch only; always at the end of each
      epoch). A run started again with the same arguments resumes there: at the same epoch and
      step, with the same optimizer state, and ends after the same number of optimizer steps
      as an uninterrupted run. Deleted when training completes unless `keep_backup`.
    - `checkpoints/last.weights.h5` after every epoch, `checkpoints/best.weights.h5` when the
      validation top-1 accuracy improves (with `validation_data`);
    - `logs/`: TensorBoard logs (when the `tensorboard` package is installed).

    Returns `(history, (epoch, step))`: the merged `History.history` of this run, and where it
    resumed (`(0, 0)` for a fresh start).
    """
    strategy = strategy or tf.distribute.get_strategy()
    chief = is_chief(strategy)
    if chief:
        write_root = output_dir
    else:
        task_type, task_id = task(strategy)
        write_root = tempfile.mkdtemp(prefix=f"keras_cvt_{task_type}{task_id}_")
    monitor = "val_top1" if validation_data is not None else None
    standard = []
    before_save = None
    if strategy.num_replicas_in_sync > 1:
        sync = SyncBatchNormStatistics(strategy)
        standard.append(sync)  # first: the callbacks after it save what it averaged
        before_save = sync.sync
    backup = ResumableBackupAndRestore(
        os.path.join(output_dir, "backup"),
        save_freq=backup_every or "epoch",
        delete_checkpoint=not keep_backup,
        write_dir=os.path.join(write_root, "backup"),
        monitor=monitor,
        before_save=before_save,
    )
    checkpoints = os.path.join(write_root, "checkpoints")
    tf.io.gfile.makedirs(checkpoints)
    standard += [
        backup,
        keras.callbacks.ModelCheckpoint(os.path.join(checkpoints, "last.weights.h5"), save_weights_only=True),
    ]
    if monitor is not None:
        best = keras.callbacks.ModelCheckpoint(
            os.path.join(checkpoints, "best.weights.h5"),
            monitor=monitor,
            mode="max",
            save_best_only=True,
            save_weights_only=True,
        )
        standard.append(best)
    if importlib.util.find_spec("tensorboard") is not None:
        standard.append(keras.callbacks.TensorBoard(os.path.join(write_root, "logs")))
    else:
        warnings.warn("TensorBoard is not installed (pip install tensorboard): no logs are written")
    all_callbacks = standard + list(callbacks)

    resumed = epoch, step = backup.restore(model)
    if monitor is not None and backup.best is not None:
        best.best = backup.best
    history = {}

    def run(first_epoch, last_epoch, steps):
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

    try:
        if step and epoch < epochs:
            # The rest of the interrupted epoch, then the following epochs at full length.
            backup.step_offset = step
            run(epoch, epoch + 1, steps_per_epoch - step)
            epoch += 1
        if epoch < epochs:
            run(epoch, epochs, steps_per_epoch)
        backup.finish()
    finally:
        if not chief:
            shutil.rmtree(write_root, ignore_errors=True)
    return history, resumed


def evaluate(model, dataset):
    """`(top1, top5)` of a model compiled with `compile_model` (or `metrics()`) on `dataset`."""
    results = model.evaluate(dataset, return_dict=True, verbose=0)
    return float(results["top1"]), float(results["top5"])
