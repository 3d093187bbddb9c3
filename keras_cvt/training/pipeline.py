"""Distributed tf.data input pipelines: training augmentation and the evaluation transform."""

import dataclasses
import math

import keras
import tensorflow as tf

from keras_cvt import transforms
from keras_cvt.pretrained import DEFAULT_TRANSFORM
from keras_cvt.training.recipe import CROP_RATIO, CROP_SCALE


def random_resized_crop(image, size, scale=CROP_SCALE, ratio=CROP_RATIO, attempts=10):
    """torchvision's `RandomResizedCrop` on one image: float32 `(size, size, 3)` in [0, 255].

    A crop of `scale` of the area and aspect ratio in `ratio` (log-uniform), placed uniformly;
    after `attempts` draws that do not fit, the centre crop of the closest ratio. Resized
    bicubically, like the original's timm loader.
    """
    shape = tf.shape(image)
    height = tf.cast(shape[0], tf.float32)
    width = tf.cast(shape[1], tf.float32)
    area = height * width * tf.random.uniform([attempts], scale[0], scale[1])
    aspect = tf.exp(tf.random.uniform([attempts], math.log(ratio[0]), math.log(ratio[1])))
    crop_w = tf.round(tf.sqrt(area * aspect))
    crop_h = tf.round(tf.sqrt(area / aspect))
    fits = (crop_w > 0) & (crop_h > 0) & (crop_w <= width) & (crop_h <= height)
    first = tf.argmax(tf.cast(fits, tf.int32))  # index of the first draw that fits
    image_ratio = width / height
    fallback_w = tf.where(image_ratio > ratio[1], tf.round(height * ratio[1]), width)
    fallback_h = tf.where(image_ratio < ratio[0], tf.round(width / ratio[0]), height)
    any_fits = tf.reduce_any(fits)
    crop_w = tf.cast(tf.where(any_fits, crop_w[first], fallback_w), tf.int32)
    crop_h = tf.cast(tf.where(any_fits, crop_h[first], fallback_h), tf.int32)
    top = tf.where(
        any_fits,
        tf.random.uniform([], 0, shape[0] - crop_h + 1, dtype=tf.int32),
        (shape[0] - crop_h) // 2,
    )
    left = tf.where(
        any_fits,
        tf.random.uniform([], 0, shape[1] - crop_w + 1, dtype=tf.int32),
        (shape[1] - crop_w) // 2,
    )
    return _resize(image[top : top + crop_h, left : left + crop_w], size)


def _resize(image, size):
    # Bicubic like the original's timm loader; float32 in [0, 255], not rounded to uint8.
    resized = tf.image.resize(tf.cast(image, tf.float32), (size, size), method="bicubic", antialias=True)
    return tf.ensure_shape(tf.clip_by_value(resized, 0.0, 255.0), (size, size, 3))


@dataclasses.dataclass
class Augmentation:
    """Training augmentation. The defaults are the original's, less the opt-in ones.

    Attributes:
        crop_scale, crop_ratio: random resized crop; `crop_scale=None` resizes the whole image.
        flip: random horizontal flips.
        randaugment: Keras `RandAugment` factor (0 disables; ~0.9 is timm's magnitude 9 of 10).
        mixup: MixUp Beta alpha (0 disables; the original used 0.8).
        cutmix: CutMix Beta alpha (0 disables; the original used 1.0). With both, each batch
            gets one of the two, chosen at random (timm's switch probability 0.5).
    """

    crop_scale: tuple = CROP_SCALE
    crop_ratio: tuple = CROP_RATIO
    flip: bool = True
    randaugment: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0


def train_dataset(
    strategy, source, image_size, per_replica_batch_size, augmentation=None, shuffle_buffer=10_000, seed=None
):
    """The distributed training input: endless, shuffled, augmented, one-hot labels.

    Each input pipeline (one per worker) reads its own shard of `source` through the
    `tf.distribute.InputContext` and batches `per_replica_batch_size` with `drop_remainder`, so
    every step sees full batches on every replica. Decoding and augmentation run in parallel
    (`AUTOTUNE`) and batches are prefetched.
    """
    augmentation = augmentation or Augmentation()
    batch_ops = _batch_augmentation(augmentation)

    def dataset_fn(context):
        ds = source.load(context.input_pipeline_id, context.num_input_pipelines, True)
        buffer = max(1, min(shuffle_buffer, -(-source.num_examples // context.num_input_pipelines)))
        ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True).repeat()

        def prepare(item, label):
            image = source.decode(item)
            if augmentation.crop_scale is None:
                image = _resize(image, image_size)
            else:
                image = random_resized_crop(
                    image, image_size, augmentation.crop_scale, augmentation.crop_ratio
                )
            if augmentation.flip:
                image = tf.image.random_flip_left_right(image)
            return image, tf.one_hot(label, source.num_classes)

        ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.batch(per_replica_batch_size, drop_remainder=True)
        if batch_ops is not None:
            ds = ds.map(batch_ops, num_parallel_calls=tf.data.AUTOTUNE)
        options = tf.data.Options()
        options.deterministic = False
        return ds.with_options(options).prefetch(tf.data.AUTOTUNE)

    return strategy.distribute_datasets_from_function(dataset_fn)


def _batch_augmentation(augmentation):
    # float32 whatever the global policy: the pipeline feeds pixels, not activations.
    randaugment = mixup = cutmix = None
    if augmentation.randaugment:
        randaugment = keras.layers.RandAugment(
            value_range=(0, 255), factor=augmentation.randaugment, dtype="float32"
        )
    if augmentation.mixup:
        mixup = keras.layers.MixUp(alpha=augmentation.mixup, dtype="float32")
    if augmentation.cutmix:
        cutmix = keras.layers.CutMix(factor=augmentation.cutmix, dtype="float32")
    if randaugment is None and mixup is None and cutmix is None:
        return None

    def apply(images, labels):
        if randaugment is not None:
            images = randaugment(images)
        batch = {"images": images, "labels": labels}
        if mixup is not None and cutmix is not None:
            batch = tf.cond(tf.random.uniform([]) < 0.5, lambda: mixup(batch), lambda: cutmix(batch))
        elif mixup is not None:
            batch = mixup(batch)
        elif cutmix is not None:
            batch = cutmix(batch)
        return tf.cast(batch["images"], tf.float32), tf.cast(batch["labels"], tf.float32)

    return apply


def eval_steps(strategy, num_examples, per_replica_batch_size, input_pipelines=1):
    """The steps of `eval_dataset` over `num_examples` (each step one batch per replica).

    Keras cannot read the length of a distributed dataset: without `steps` it runs until the
    data ends and warns "Your input ran out of data; interrupting training" at every
    evaluation. With several replicas each of the `input_pipelines` pads its shard to this
    many batches per local replica (`eval_dataset`)."""
    local_replicas = strategy.num_replicas_in_sync // input_pipelines
    largest_shard = -(-num_examples // input_pipelines)
    batches = -(-largest_shard // per_replica_batch_size)
    return -(-batches // local_replicas)


def eval_dataset(
    strategy,
    source,
    image_size,
    per_replica_batch_size,
    crop_ratio=DEFAULT_TRANSFORM.crop_ratio,
    interpolation=DEFAULT_TRANSFORM.interpolation,
):
    """The distributed evaluation input: every image once, with the original evaluation transform.

    `keras_cvt.transforms.evaluation_transform(image_size, crop_ratio, interpolation)`: resize
    of the short side to `image_size / crop_ratio` and centre crop (`crop_ratio=None`: straight
    resize, the 384 models' transform); the defaults are `DEFAULT_TRANSFORM`'s, and
    `keras_cvt.pretrained.transform_for` gives a checkpoint's. Elements are
    `(images, one-hot labels, sample weights)`.

    With several replicas each input pipeline pads its shard with blank images of weight 0 to
    the same whole number of full batches per replica, so accuracies are exact and no replica
    ever gets an empty batch: TensorFlow's CPU convolution returns the wrong shape for an
    empty batch, and under `MultiWorkerMirroredStrategy` workers with fewer batches than
    others would otherwise get empty ones. (The loss averages over the padding too.)
    """
    transform = transforms.evaluation_transform(image_size, crop_ratio, interpolation)
    replicas = strategy.num_replicas_in_sync

    def dataset_fn(context):
        ds = source.load(context.input_pipeline_id, context.num_input_pipelines, False)
        ds = ds.map(
            lambda item, label: (transform(source.decode(item)), tf.one_hot(label, source.num_classes), 1.0),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        if replicas > 1:
            batches = eval_steps(strategy, source.num_examples, per_replica_batch_size, context.num_input_pipelines)
            batches *= replicas // context.num_input_pipelines
            blank = (tf.zeros((image_size, image_size, 3)), tf.zeros((source.num_classes,)), 0.0)
            ds = ds.concatenate(tf.data.Dataset.from_tensors(blank).repeat())
            ds = ds.take(batches * per_replica_batch_size)
        return ds.batch(per_replica_batch_size).prefetch(tf.data.AUTOTUNE)

    return strategy.distribute_datasets_from_function(dataset_fn)
