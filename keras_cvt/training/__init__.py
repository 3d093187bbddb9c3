"""Training and fine-tuning CvT at scale: tf.data input pipelines, tf.distribute, resumable fit.

TensorFlow backend only. `examples/train.py` is the command line that puts these pieces
together; each piece also works on its own:

- `make_strategy`: `MirroredStrategy` (several GPUs), `MultiWorkerMirroredStrategy` (several
  machines, `TF_CONFIG`), `TPUStrategy`, or the default strategy.
- `tfds_source`, `image_folder_source`, `array_source`: labelled images, read shard by shard;
  image folders are decoded once first (`find_unreadable_images`, one parallel tf.data pass)
  and unreadable files are listed in one error, or skipped with a warning.
- `train_dataset`, `eval_dataset`: distributed input pipelines (parallel decoding and
  augmentation, prefetching, one shard per input pipeline through `tf.distribute.InputContext`).
- `build_model`: a CvT from scratch, or fine-tuning from `.weights.h5` / pretrained weights with
  a new classifier for another number of classes.
- `recipe_schedule` (Keras' `CosineDecay` with warm-up), `weight_decay_for`, `make_optimizer`,
  `compile_model`: the original recipe.
- `prepare_for_strategy`: workarounds for Keras 3 under `tf.distribute`, keras-team/keras#20585
  (multi-worker training) included.
- `fit`: `model.fit` that can be killed anywhere and run again: backups every N steps that
  resume at the same epoch *and step* (a rerun with other parameters or another model is
  refused, saying what differs), best/last checkpoints (`best` never replaced by a worse model),
  a completion record (a completed run is not trained again without `restart=True`) and
  TensorBoard logs, all published atomically by the chief worker only, each file with a size
  and SHA-256 record checked before use; one writer per run directory (an OS lock); SIGTERM
  and SIGINT back up at the current step and raise `Preempted`; BatchNorm statistics kept
  identical on all replicas.

The recipe is the original's (microsoft/CvT `experiments/imagenet/cvt/cvt-13-224x224.yaml`,
`lib/config/default.py`, `lib/optim/build.py`, timm's cosine scheduler): AdamW, learning rate
2.5e-4 per 256 images (the yaml's `TRAIN.LR` for 256 images per GPU, multiplied by the number of
GPUs), the paper's weight decay of each variant (its `keras_cvt.architectures` record; `WEIGHT_DECAY` for
custom architectures) except on norms, biases and the class token, 5 warm-up epochs from
1e-6, cosine decay to 1e-5 over 300 epochs, label smoothing 0.1, stochastic depth from the
builder, random resized crops (scale 0.08-1, ratio 3/4-4/3) and horizontal flips.
"""

from keras_cvt.training.data import (
    IMAGE_EXTENSIONS,
    ImageSource,
    array_source,
    default_tfds_splits,
    find_unreadable_images,
    image_folder_source,
    list_image_folder,
    tfds_source,
)
from keras_cvt.training.fit import (
    Checkpoints,
    ResumableBackupAndRestore,
    SyncBatchNormStatistics,
    evaluate,
    fit,
    model_signature,
    read_completed,
    run_directory_lock,
)
from keras_cvt.training.preemption import Preempted, PreemptionCallback
from keras_cvt.variants import BUILDERS
from keras_cvt.training.model import build_model, head_classes
from keras_cvt.training.pipeline import (
    Augmentation,
    eval_dataset,
    eval_steps,
    random_resized_crop,
    train_dataset,
)
from keras_cvt.training.recipe import (
    ADAM_BETAS,
    ADAM_EPSILON,
    BASE_BATCH_SIZE,
    BASE_LEARNING_RATE,
    CROP_RATIO,
    CROP_SCALE,
    CUTMIX_ALPHA,
    EPOCHS,
    LABEL_SMOOTHING,
    MIN_LEARNING_RATE,
    MIXUP_ALPHA,
    NO_WEIGHT_DECAY_NAMES,
    VARIANT_WEIGHT_DECAY,
    WARMUP_EPOCHS,
    WARMUP_LEARNING_RATE,
    WEIGHT_DECAY,
    WarmupCosineDecay,
    compile_model,
    make_optimizer,
    metrics,
    no_weight_decay_variables,
    recipe_schedule,
    scaled_learning_rate,
    weight_decay_for,
)
from keras_cvt.training.strategy import (
    STRATEGIES,
    is_chief,
    is_multi_worker,
    make_strategy,
    prepare_for_strategy,
    task,
)
