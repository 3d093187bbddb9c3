"""The original evaluation transform, in TensorFlow for `tf.data` pipelines.

The original (`lib/dataset/transformas/build.py`, torchvision on PIL images) resizes the short
side and takes a centre crop, or resizes straight to the model's size; each checkpoint's record
in `keras_cvt.pretrained` (an `EvaluationTransform`) says which, at what size and with which
filter. `from_record` builds the transform a record describes.
"""

import tensorflow as tf

from keras_cvt import pretrained
from keras_cvt.pretrained import DEFAULT_TRANSFORM

# PIL's filters (the records' `interpolation`) that `tf.image.resize` computes alike: with
# `antialias` both widen the kernel when downscaling.
INTERPOLATIONS = ("bicubic", "bilinear")


def _resize(image, height, width, interpolation):
    # PIL's uint8 output is clipped and rounded; torchvision fed the original models exactly that.
    resized = tf.image.resize(image, tf.stack([height, width]), method=interpolation, antialias=True)
    return tf.round(tf.clip_by_value(resized, 0.0, 255.0))


def from_record(transform):
    """The transform that an `keras_cvt.pretrained.EvaluationTransform` record describes, e.g.
    `from_record(keras_cvt.pretrained.transform_for("cvt13", "imagenet"))`."""
    if not isinstance(transform, pretrained.EvaluationTransform):
        raise TypeError(
            f"`transform` must be a keras_cvt.pretrained.EvaluationTransform, got {transform!r} "
            f"({type(transform).__name__})"
        )
    return evaluation_transform(transform.size, transform.crop_ratio, transform.interpolation)


def evaluation_transform(
    size=DEFAULT_TRANSFORM.size,
    crop_ratio=DEFAULT_TRANSFORM.crop_ratio,
    interpolation=DEFAULT_TRANSFORM.interpolation,
):
    """Returns `fn(image) -> (size, size, 3) float32` pixels in [0, 255].

    Args:
        size: output height and width.
        crop_ratio: with a ratio, the short side is resized to `int(size / crop_ratio)` and the
            centre `size x size` is cropped; `None` resizes straight to `size x size`.
        interpolation: the resize filter, one of `INTERPOLATIONS` (PIL's names).

    `fn` takes one decoded RGB image `(height, width, 3)` (uint8 or float in [0, 255]), so map it
    over a dataset before batching. The models' built-in preprocessing does the normalisation
    (with the record's `mean` and `std`).
    """
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"`size` must be a positive integer, got size={size!r}")
    if crop_ratio is not None and not 0.0 < crop_ratio <= 1.0:
        raise ValueError(f"`crop_ratio` must be in (0, 1] or None, got crop_ratio={crop_ratio!r}")
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"`interpolation` must be one of {INTERPOLATIONS}, got interpolation={interpolation!r}")

    def transform(image):
        image = tf.convert_to_tensor(image)
        tf.debugging.assert_rank(image, 3, message="evaluation_transform takes one (height, width, 3) image")
        image = tf.cast(image, tf.float32)
        if crop_ratio is None:
            return _resize(image, size, size, interpolation)
        new_height, new_width = tf.unstack(
            tf.cast(evaluation_resize_size(tf.shape(image)[:2], size, crop_ratio), tf.int32)
        )
        image = _resize(image, new_height, new_width, interpolation)
        top = tf.cast(tf.round(tf.cast(new_height - size, tf.float32) / 2.0), tf.int32)
        left = tf.cast(tf.round(tf.cast(new_width - size, tf.float32) / 2.0), tf.int32)
        return tf.ensure_shape(image[top : top + size, left : left + size], (size, size, 3))

    return transform


def evaluation_resize_size(height_width, size=DEFAULT_TRANSFORM.size, crop_ratio=DEFAULT_TRANSFORM.crop_ratio):
    """`[height, width]` (int64) that `evaluation_transform` resizes an image of `height_width` to.

    With a `crop_ratio` that is before the centre crop, so for a long thin image it is far more
    pixels than the image has: servers bound it before resizing (`keras_cvt.serving`).
    """
    height_width = tf.cast(height_width, tf.int64)
    if crop_ratio is None:
        return tf.constant([size, size], tf.int64)
    resize_to = int(size / crop_ratio)
    height = tf.cast(height_width[0], tf.float64)
    width = tf.cast(height_width[1], tf.float64)
    # torchvision's Resize(int): the short side becomes `resize_to`, the long one is truncated.
    # The floor of 1 only matters for a header that claims no pixels (no image has them).
    scale = resize_to / tf.maximum(tf.minimum(height, width), 1.0)
    return tf.stack(
        [
            tf.where(height <= width, tf.constant(resize_to, tf.int64), tf.cast(height * scale, tf.int64)),
            tf.where(width < height, tf.constant(resize_to, tf.int64), tf.cast(width * scale, tf.int64)),
        ]
    )


def evaluation_transform_for(variant, weights):
    """The evaluation transform that goes with `weights` of `variant` (see
    `keras_cvt.pretrained.transform_for`), e.g. `("cvt13", "imagenet-384")`."""
    return from_record(pretrained.transform_for(variant, weights))
