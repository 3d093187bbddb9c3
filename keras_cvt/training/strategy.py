"""tf.distribute strategies, and what Keras 3 needs to train under them (keras-team/keras#20585)."""

import tensorflow as tf

STRATEGIES = ("auto", "mirrored", "multiworker", "tpu", "none")

def make_strategy(name="auto", tpu=None):
    """Returns the `tf.distribute.Strategy` that `name` asks for.

    Args:
        name: `"auto"` (`"mirrored"` when GPUs are present, else `"none"`), `"mirrored"` (all
            local GPUs, or all logical CPUs when there is no GPU), `"multiworker"` (the cluster
            in `TF_CONFIG`), `"tpu"`, or `"none"` (the default strategy, one device).
        tpu: the TPU address or name for `"tpu"` (None: the local TPU / `TPU_NAME`).

    Create it before anything else touches TensorFlow: `MultiWorkerMirroredStrategy` has to
    configure collective ops at program startup.
    """
    if name not in STRATEGIES:
        raise ValueError(f"`strategy` must be one of {STRATEGIES}, got {name!r}")
    if name == "auto":
        name = "mirrored" if tf.config.list_physical_devices("GPU") else "none"
    if name == "mirrored":
        devices = [d.name for d in tf.config.list_logical_devices("GPU")]
        devices = devices or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    return tf.distribute.get_strategy()

def is_multi_worker(strategy):
    """Whether `strategy` runs on more than one worker (the case keras#20585 breaks)."""
    return (
        isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        and strategy.extended._in_multi_worker_mode()
    )

def task(strategy):
    """`(task_type, task_id)` of this process in its cluster; `(None, None)` outside one."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not is_multi_worker(strategy) or resolver is None:
        return None, None
    return resolver.task_type, resolver.task_id

def is_chief(strategy):
    """Whether this process writes checkpoints and logs: the chief, or worker 0 without one."""
    if not is_multi_worker(strategy):
        return True
    task_type, task_id = task(strategy)
    cluster = strategy.cluster_resolver.cluster_spec().as_dict()
    return task_type == "chief" or (task_type == "worker" and task_id == 0 and "chief" not in cluster)

def prepare_for_strategy(model, strategy, image_size, num_classes):
    """Makes a compiled model trainable with `fit`/`evaluate` under `strategy`.

    Keras 3 has two problems with `tf.distribute` that this works around, on this model only
    (Keras itself is not patched). Call it after `compile_model`, before `fit`.

    1. Before the first step, `fit` and `evaluate` build the metrics and the optimizer from one
       batch of the distributed dataset (`_maybe_symbolic_build`), averaging the replicas'
       batches with `strategy.reduce("MEAN", (x, y))`. That fails when the first batch is
       partial (a dataset smaller than replicas x batch size: replicas get different shapes,
       "Inputs to operation AddN ... must have the same size and shape"), and always under
       `MultiWorkerMirroredStrategy` on several workers, whose collective reduction refuses
       the tuple ("Attempt to convert a value (PerReplica...) with an unsupported type").
       Fix: build everything here, in the strategy's scope, from the input signature (no data
       read, nothing reduced), and turn that step of `fit`/`evaluate` into a no-op.
    2. keras-team/keras#20585 (also tensorflow/tensorflow#72388): Keras 3 does not support
       `MultiWorkerMirroredStrategy`. On several workers each step's logs (loss and metrics,
       scalars) are averaged across workers with `strategy.reduce("MEAN", value, axis=0)`,
       which fails on a scalar ("Invalid reduction dimension 0 for input with 0 dimensions");
       `evaluate` does the same. Fix: wrap `train_step` and `test_step` so that they return
       each log as a 1-element vector: the reduction over axis 0 then averages the replicas'
       values into a scalar, which is what Keras does on one worker.
    """
    if model._distribute_strategy is None:
        return model  # built outside any strategy: Keras builds it lazily, without reductions
    signature = (
        tf.TensorSpec((None, image_size, image_size, 3), tf.float32),
        tf.TensorSpec((None, num_classes), tf.float32),
    )
    with strategy.scope():
        model._symbolic_build(data_batch=signature)
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
    if is_multi_worker(strategy):
        for name in ("train_step", "test_step"):
            setattr(model, name, _vector_logs(getattr(model, name)))
    return model

def _vector_logs(step):
    def wrapped(data):
        return {key: tf.reshape(value, [1]) for key, value in step(data).items()}

    return wrapped
