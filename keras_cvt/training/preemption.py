"""Pre-emption during `fit`: SIGTERM or SIGINT finishes the step, backs up at it, and stops.

Kubernetes, Slurm and spot instances pre-empt a job with SIGTERM and a grace period before
SIGKILL; Ctrl-C sends SIGINT. Either, received during `fit`, lets the current step finish,
writes a backup at that step (at the end of an epoch: after its validation and checkpoints,
as every epoch's end does) and raises `Preempted`, whose `exit_status` (128 + the signal's
number: 143 for SIGTERM, 130 for SIGINT, the statuses a shell gives a process that the signal
ended, and 143 the one TensorFlow's `PreemptionCheckpointHandler` exits with for a restart) is
what examples/train.py exits with. Run the same command again and it resumes at that step.

Under `MultiWorkerMirroredStrategy` the signal may reach one worker only: after every step
the workers add up their flags (one small all-reduce), so all of them see it after the same
step and each saves there, as `PreemptionCheckpointHandler` does through the coordination
service. The first signal restores the handler that was there before, so a second one acts
as it would without us (SIGINT: KeyboardInterrupt; SIGTERM: the process ends at once).
"""

import signal
import threading

import keras
import tensorflow as tf

from keras_cvt.training.strategy import is_multi_worker

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
    """`fit` stopped for a signal after writing a backup; run it again to resume there."""

    def __init__(self, signal_number, epoch, step, backup):
        self.signal_number = signal_number
        self.exit_status = 128 + signal_number
        self.epoch, self.step, self.backup = epoch, step, backup
        name = signal.Signals(signal_number).name if signal_number else "a signal"
        super().__init__(
            f"stopped by {name} at epoch {epoch} step {step} after writing the backup {backup}: "
            f"run the same command again to resume there (exit status {self.exit_status})"
        )


class PreemptionCallback(keras.callbacks.Callback):
    """Stops `fit` after the step in which a signal of `SIGNALS` arrived, with a backup at it.

    Args:
        backup: the `ResumableBackupAndRestore` of the run (it must come before this callback,
            so that at an epoch's end its backup is written first).
        strategy: the run's strategy; under several workers the flags are all-reduced.
    """

    def __init__(self, backup, strategy):
        super().__init__()
        self.backup = backup
        self.strategy = strategy
        self.received = 0
        self._previous = {}
        self._agree = None

    def install(self):
        """Catches `SIGNALS` until `uninstall` (in the main thread only: Python allows no other)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for number in SIGNALS:
            self._previous[number] = signal.signal(number, self._handle)

    def uninstall(self):
        while self._previous:
            number, handler = self._previous.popitem()
            signal.signal(number, handler)

    def _handle(self, number, frame):
        self.received = self.received or number
        handler = self._previous.pop(number, None)
        if handler is not None:
            signal.signal(number, handler)

    def _stop(self):
        """The signal to stop for (0: none), the same on every worker."""
        if not is_multi_worker(self.strategy):
            return self.received
        if self._agree is None:

            def agree(received):
                flags = self.strategy.run(lambda: tf.identity(received))
                return self.strategy.reduce(tf.distribute.ReduceOp.SUM, flags, axis=None)

            self._agree = tf.function(agree)
        # A sum of signal numbers is no signal: any positive value stops, reported as SIGTERM
        # unless this worker received its own.
        total = int(self._agree(tf.constant(self.received, tf.int32)))
        return (self.received or int(signal.SIGTERM)) if total else 0

    def on_train_batch_end(self, batch, logs=None):
        number = self._stop()
        if not number:
            return
        epoch, step = self.backup.current
        if step >= self.backup.steps_per_epoch:
            self.received = number  # the epoch's end backs up, after validation; stop there
            return
        path = self.backup.save_now()
        raise Preempted(number, epoch, step, path)

    def on_epoch_end(self, epoch, logs=None):
        number = self._stop()
        if number:
            raise Preempted(number, epoch + 1, 0, self.backup.last_saved)
