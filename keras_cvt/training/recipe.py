"""The original training recipe: constants, learning rate schedule, optimizer, loss and metrics."""

import math

import keras
from keras import ops

from keras_cvt.architectures import VARIANTS


BASE_LEARNING_RATE = 2.5e-4
BASE_BATCH_SIZE = 256
WEIGHT_DECAY = 0.05
# The paper's weight decay per variant (section 4.1), from the variants' records.
VARIANT_WEIGHT_DECAY = {name: variant.weight_decay for name, variant in VARIANTS.items()}
EPOCHS = 300
WARMUP_EPOCHS = 5
WARMUP_LEARNING_RATE = 1e-6
MIN_LEARNING_RATE = 1e-5
LABEL_SMOOTHING = 0.1
# PyTorch's AdamW defaults, which the original used; Keras' epsilon is 1e-7.
ADAM_BETAS = (0.9, 0.999)
ADAM_EPSILON = 1e-8
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
# Opt-in: the original also used timm's RandAugment (rand-m9-mstd0.5), mixup 0.8 and cutmix 1.0.
MIXUP_ALPHA = 0.8
CUTMIX_ALPHA = 1.0

# Variables that the original trains without weight decay: LayerNorm and BatchNorm scale and
# offset (`WITHOUT_WD_LIST: ['bn', 'bias', 'ln']`), every bias, and the class token
# (`no_weight_decay()`). In Keras their names are `gamma`, `beta`, `bias` and `token`.
NO_WEIGHT_DECAY_NAMES = ("gamma", "beta", "bias", "token")


def scaled_learning_rate(global_batch_size, base_learning_rate=BASE_LEARNING_RATE):
    """The original's linear scaling: `base_learning_rate` per 256 images."""
    return base_learning_rate * global_batch_size / BASE_BATCH_SIZE


@keras.saving.register_keras_serializable(package="keras_cvt")
class WarmupCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from `warmup_learning_rate`, then cosine decay to `min_learning_rate`.

    Per optimizer step. At step 0 the rate is `warmup_learning_rate`; it reaches
    `peak_learning_rate` at `warmup_steps` and `min_learning_rate` at `total_steps`, and stays
    there after. (timm's scheduler, which the original used, changes the rate per epoch.)
    """

    def __init__(
        self, peak_learning_rate, total_steps, warmup_steps=0, warmup_learning_rate=0.0, min_learning_rate=0.0
    ):
        if total_steps < 1 or not 0 <= warmup_steps <= total_steps:
            raise ValueError(
                f"need total_steps >= 1 and 0 <= warmup_steps <= total_steps, got "
                f"total_steps={total_steps}, warmup_steps={warmup_steps}"
            )
        self.peak_learning_rate = float(peak_learning_rate)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.warmup_learning_rate = float(warmup_learning_rate)
        self.min_learning_rate = float(min_learning_rate)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup = self.warmup_learning_rate + (
            self.peak_learning_rate - self.warmup_learning_rate
        ) * step / max(self.warmup_steps, 1)
        progress = ops.clip(
            (step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1), 0.0, 1.0
        )
        cosine = self.min_learning_rate + 0.5 * (self.peak_learning_rate - self.min_learning_rate) * (
            1.0 + ops.cos(math.pi * progress)
        )
        return ops.where(step < self.warmup_steps, warmup, cosine)

    def get_config(self):
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "warmup_learning_rate": self.warmup_learning_rate,
            "min_learning_rate": self.min_learning_rate,
        }


def recipe_schedule(
    peak_learning_rate,
    epochs,
    steps_per_epoch,
    warmup_epochs=WARMUP_EPOCHS,
    warmup_learning_rate=WARMUP_LEARNING_RATE,
    min_learning_rate=MIN_LEARNING_RATE,
):
    """The original's schedule in steps. The recipe's absolute warm-up start and floor are
    capped at the peak, which a small batch can bring below them."""
    return WarmupCosineDecay(
        peak_learning_rate,
        total_steps=epochs * steps_per_epoch,
        warmup_steps=min(warmup_epochs, epochs) * steps_per_epoch,
        warmup_learning_rate=min(warmup_learning_rate, peak_learning_rate),
        min_learning_rate=min(min_learning_rate, peak_learning_rate),
    )


def no_weight_decay_variables(model):
    """The trainable variables that the original recipe does not decay.

    LayerNorm and BatchNorm scales and offsets, every bias, and the class token: Keras names
    them `gamma`, `beta`, `bias` and `token` (`NO_WEIGHT_DECAY_NAMES`). Kernels, including the
    depthwise convolutions of the attention projections, are decayed, as in the original.
    """
    return [v for v in model.trainable_variables if v.name in NO_WEIGHT_DECAY_NAMES]


def make_optimizer(model, learning_rate, weight_decay=WEIGHT_DECAY):
    """AdamW with the original's betas and epsilon, no decay on `no_weight_decay_variables`.

    Build the model first, in the strategy's scope. The exclusions are given as variables, not
    as `var_names` patterns: Keras matches patterns against `tf.Variable.name` inside
    distributed updates, which there is the full path, with `/replica_1` on other replicas.
    """
    optimizer = keras.optimizers.AdamW(
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        beta_1=ADAM_BETAS[0],
        beta_2=ADAM_BETAS[1],
        epsilon=ADAM_EPSILON,
    )
    optimizer.exclude_from_weight_decay(var_list=no_weight_decay_variables(model))
    return optimizer


def compile_model(
    model, optimizer, label_smoothing=LABEL_SMOOTHING, jit_compile=False, steps_per_execution=1
):
    """Cross-entropy on logits with label smoothing; top-1 and top-5 accuracy as `top1`/`top5`."""
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=label_smoothing),
        # Weighted: Keras ignores sample weights in plain `metrics`, and eval_dataset's padding
        # (blank images of weight 0) would count as misclassified images.
        weighted_metrics=metrics(),
        jit_compile=jit_compile,
        steps_per_execution=steps_per_execution,
    )


def metrics():
    return [
        keras.metrics.CategoricalAccuracy(name="top1"),
        keras.metrics.TopKCategoricalAccuracy(k=5, name="top5"),
    ]
