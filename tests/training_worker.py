"""Subprocess side of tests/test_training.py: runs that need a TensorFlow of their own.

    python -m tests.training_worker mirrored RESULT.json -- TRAIN_ARGS...
    python -m tests.training_worker multiworker RESULT.npz -- TRAIN_ARGS...
    KERAS_CVT_KILL_AT=EVENT@STEP [KERAS_CVT_ACTION=...] python -m tests.training_worker killable - -- TRAIN_ARGS...

`mirrored` splits the CPU into two logical devices (possible only before TensorFlow starts,
hence a process of its own), trains with examples/train.py on them, and records the
replicas' copies of every variable. `multiworker` trains as one worker of the cluster in
`TF_CONFIG` and records its final weights (with `KERAS_CVT_KILL_AT`, it acts as `killable`
and exits with train.py's status). `killable` runs examples/train.py's `main` (exiting with
its status) and at the event named in `KERAS_CVT_KILL_AT`, when the optimizer has made STEP
steps, does `KERAS_CVT_ACTION`: `SIGKILL` (the default), `SIGTERM` or `SIGINT` sends that
signal to itself; `fill:PATH` fills PATH's file system, leaving 16 KiB:

- `step@N`: as step N+1 begins; `validation@N`: as fit's validation begins;
- `write:NAME@N`: while `keras_cvt.atomic.publish_file` writes NAME (the temporary file is
  complete, not yet renamed); `published:NAME@N`: right after NAME is published. NAME is an
  `fnmatch` pattern (`backup-*.weights.h5`).

Results (of `mirrored` and `multiworker`) are written atomically.
"""

import contextlib
import fnmatch
import importlib.util
import json
import os
import pathlib
import signal
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent


def load_example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_atomically(path, write):
    from keras_cvt import atomic

    with atomic.publish_file(path) as temporary, open(temporary, "wb") as f:
        write(f)


def mirrored(result_path, train_args):
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    train = load_example("train")
    model, history, _ = train.run(train.parse_args([*train_args, "--strategy", "mirrored"]))
    strategy = model.distribute_strategy

    def replica_spread(variables):
        # Largest difference between a variable's copies on the replicas, per variable.
        spread = {}
        for v in variables:
            copies = [c.numpy() for c in v.value.values]
            spread[v.path] = max(float(np.max(np.abs(c - copies[0]))) if c.size else 0.0 for c in copies)
        return spread, len(copies)

    model_spread, copies = replica_spread(model.variables)
    optimizer_spread, _ = replica_spread(model.optimizer.variables)

    # Which variables a recipe optimizer decays, under the strategy: with zero gradients Adam
    # does not move anything, so only weight decay changes a (non-zero) variable.
    from keras_cvt import training

    with strategy.scope():
        optimizer = training.make_optimizer(model, learning_rate=0.1, weight_decay=0.5)
        optimizer.build(model.trainable_variables)
    before = {v.path: v.numpy() for v in model.trainable_variables}

    @tf.function
    def zero_step():
        def apply():
            optimizer.apply_gradients([(tf.zeros_like(v.value), v) for v in model.trainable_variables])

        strategy.run(apply)

    zero_step()
    decayed = sorted(
        v.path for v in model.trainable_variables if not np.array_equal(v.numpy(), before[v.path])
    )
    result = {
        "replicas": strategy.num_replicas_in_sync,
        "copies": copies,
        "model_spread": model_spread,
        "optimizer_spread": optimizer_spread,
        "loss": history["loss"],
        "iterations": int(model.optimizer.iterations.numpy()),
        "decayed": decayed,
        "trainable": sorted(before),
    }
    write_atomically(result_path, lambda f: f.write(json.dumps(result).encode()))


def multiworker(result_path, train_args):
    train = load_example("train")
    if "KERAS_CVT_KILL_AT" in os.environ:
        sys.exit(train.main([*train_args, "--strategy", "multiworker"], callbacks=[event_callback()]))
    model, _, (top1, top5) = train.run(train.parse_args([*train_args, "--strategy", "multiworker"]))
    arrays = {v.path: v.numpy() for v in model.weights}
    arrays["__iterations__"] = np.asarray(int(model.optimizer.iterations.numpy()))
    arrays["__top1__"] = np.asarray(top1)
    write_atomically(result_path, lambda f: np.savez(f, **arrays))


def fill_file_system(path):
    """Fills the file system of `path` with a file there, leaving 16 KiB free."""
    stat = os.statvfs(os.path.dirname(path))
    free = stat.f_bavail * stat.f_frsize
    with open(path, "wb") as f:
        f.write(b"\0" * max(free - 16 * 1024, 0))


def event_callback():
    """The callback that acts at `KERAS_CVT_KILL_AT` (see the module's docstring), patching
    `keras_cvt.atomic.publish_file` for its `write:` and `published:` events."""
    import keras

    from keras_cvt import atomic

    event, _, at = os.environ["KERAS_CVT_KILL_AT"].rpartition("@")
    at = int(at)
    action = os.environ.get("KERAS_CVT_ACTION", "SIGKILL")

    class Act(keras.callbacks.Callback):
        done = False

        def kill_if(self, name):
            if self.done or not fnmatch.fnmatchcase(name, event):
                return
            if int(self.model.optimizer.iterations.numpy()) != at:
                return
            self.done = True
            sys.stdout.flush()
            if action.startswith("fill:"):
                fill_file_system(action[len("fill:") :])
            else:
                os.kill(os.getpid(), getattr(signal, action))

        def on_train_batch_begin(self, batch, logs=None):
            self.kill_if("step")

        def on_test_begin(self, logs=None):
            self.kill_if("validation")

    act = Act()
    publish_file = atomic.publish_file

    @contextlib.contextmanager
    def killable_publish_file(path):
        name = os.path.basename(path)
        with publish_file(path) as temporary:
            yield temporary
            act.kill_if(f"write:{name}")
        act.kill_if(f"published:{name}")

    atomic.publish_file = killable_publish_file
    return act


def killable(result_path, train_args):
    train = load_example("train")
    sys.exit(train.main(train_args, callbacks=[event_callback()]))


if __name__ == "__main__":
    command, result, separator, *args = sys.argv[1:]
    assert separator == "--", "usage: python -m tests.training_worker COMMAND RESULT -- TRAIN_ARGS..."
    {"mirrored": mirrored, "multiworker": multiworker, "killable": killable}[command](result, args)
