"""The original training recipe: constants, learning rate schedule, optimizer, loss and metrics."""

import keras

from keras_cvt import architectures
from keras_cvt.arguments import check_integer


BASE_LEARNING_RATE = 2.5e-4
BASE_BATCH_SIZE = 256
WEIGHT_DECAY = 0.05
# The paper's weight decay per variant (section 4.1), from the variants' records.
VARIANT_WEIGHT_DECAY = {name: variant.weight_decay for name, variant in architectures.VARIANTS.items()}
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


def weight_decay_for(architecture):
    """The paper's weight decay for a variant name (its record's), `WEIGHT_DECAY` for a custom
    architecture (a dict of `keras_cvt.CvT` arguments)."""
    if isinstance(architecture, str):
        return architectures.get(architecture).weight_decay
    return WEIGHT_DECAY


def scaled_learning_rate(global_batch_size, base_learning_rate=BASE_LEARNING_RATE):
    """The original's linear scaling: `base_learning_rate` per 256 images."""
    return base_learning_rate * global_batch_size / BASE_BATCH_SIZE


def _cosine_decay_arguments(
    peak_learning_rate, total_steps, warmup_steps=0, warmup_learning_rate=0.0, min_learning_rate=0.0
):
    """`keras.optimizers.schedules.CosineDecay` arguments for a linear warm-up from
    `warmup_learning_rate` to `peak_learning_rate` over `warmup_steps`, then a cosine decay to
    `min_learning_rate` at `total_steps`."""
    total_steps = check_integer("total_steps", total_steps, 1)
    warmup_steps = check_integer("warmup_steps", warmup_steps, 0)
    if warmup_steps > total_steps:
        raise ValueError(
            f"`warmup_steps` must be <= `total_steps`, got warmup_steps={warmup_steps}, total_steps={total_steps}"
        )
    peak_learning_rate = float(peak_learning_rate)
    return {
        "initial_learning_rate": float(warmup_learning_rate),
        "warmup_target": peak_learning_rate,
        "warmup_steps": warmup_steps,
        # CosineDecay refuses 0 decay steps; with 1, a schedule that is all warm-up reaches
        # the floor one step after its end, as the cosine of 0 steps would.
        "decay_steps": max(total_steps - warmup_steps, 1),
        "alpha": float(min_learning_rate) / peak_learning_rate if peak_learning_rate else 0.0,
    }


@keras.saving.register_keras_serializable(package="keras_cvt")
class WarmupCosineDecay(keras.optimizers.schedules.CosineDecay):
    """Linear warm-up from `warmup_learning_rate`, then cosine decay to `min_learning_rate`.

    Keras' `CosineDecay` with warm-up (which `recipe_schedule` returns), under the arguments
    of keras_cvt 0.2, whose saved optimizer configs name this class. Per optimizer step: at
    step 0 the rate is `warmup_learning_rate`; it reaches `peak_learning_rate` at
    `warmup_steps` and `min_learning_rate` at `total_steps`, and stays there after. (timm's
    scheduler, which the original used, changes the rate per epoch.)
    """

    def __init__(
        self, peak_learning_rate, total_steps, warmup_steps=0, warmup_learning_rate=0.0, min_learning_rate=0.0
    ):
        arguments = {
            "peak_learning_rate": peak_learning_rate,
            "total_steps": total_steps,
            "warmup_steps": warmup_steps,
            "warmup_learning_rate": warmup_learning_rate,
            "min_learning_rate": min_learning_rate,
        }
        super().__init__(**_cosine_decay_arguments(**arguments), name="WarmupCosineDecay")
        self._arguments = arguments

    def get_config(self):
        return dict(self._arguments)


def recipe_schedule(
    peak_learning_rate,
    epochs,
    steps_per_epoch,
    warmup_epochs=WARMUP_EPOCHS,
    warmup_learning_rate=WARMUP_LEARNING_RATE,
    min_learning_rate=MIN_LEARNING_RATE,
):
    """The original's schedule in steps, as a `keras.optimizers.schedules.CosineDecay` with
    warm-up. The recipe's absolute warm-up start and floor are capped at the peak, which a
    small batch can bring below them."""
    return keras.optimizers.schedules.CosineDecay(
        **_cosine_decay_arguments(
            peak_learning_rate,
            total_steps=epochs * steps_per_epoch,
            warmup_steps=min(warmup_epochs, epochs) * steps_per_epoch,
            warmup_learning_rate=min(warmup_learning_rate, peak_learning_rate),
            min_learning_rate=min(min_learning_rate, peak_learning_rate),
        )
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
