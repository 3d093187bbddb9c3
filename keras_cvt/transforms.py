"""The original evaluation transform, in TensorFlow for `tf.data` pipelines.

The original (`lib/dataset/transformas/build.py`, torchvision on PIL images) resizes bicubically;
the 224 models resize the short side to 256 and take the centre 224 x 224, the 384 models resize
straight to 384 x 384 (each checkpoint's record in `keras_cvt.pretrained` says which).
"""

import tensorflow as tf

from keras_cvt import pretrained
from keras_cvt.pretrained import DEFAULT_TRANSFORM


def _resize(image, height, width):
    # PIL's bicubic filter widens when downscaling (antialias) and its uint8 output is clipped
    # and rounded; torchvision fed the original models exactly that.
    resized = tf.image.resize(image, tf.stack([height, width]), method="bicubic", antialias=True)
    return tf.round(tf.clip_by_value(resized, 0.0, 255.0))


def evaluation_transform(size=DEFAULT_TRANSFORM.size, crop_ratio=DEFAULT_TRANSFORM.crop_ratio):
    """Returns `fn(image) -> (size, size, 3) float32` pixels in [0, 255].

    Args:
        size: output height and width.
        crop_ratio: with a ratio, the short side is resized to `int(size / crop_ratio)` and the
            centre `size x size` is cropped; `None` resizes straight to `size x size`.

    `fn` takes one decoded RGB image `(height, width, 3)` (uint8 or float in [0, 255]), so map it
    over a dataset before batching. The models' built-in preprocessing does the normalisation.
    """
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"`size` must be a positive integer, got size={size!r}")
    if crop_ratio is not None and not 0.0 < crop_ratio <= 1.0:
        raise ValueError(f"`crop_ratio` must be in (0, 1] or None, got crop_ratio={crop_ratio!r}")

    def transform(image):
        image = tf.convert_to_tensor(image)
        tf.debugging.assert_rank(image, 3, message="evaluation_transform takes one (height, width, 3) image")
        image = tf.cast(image, tf.float32)
        if crop_ratio is None:
            return _resize(image, size, size)
        new_height, new_width = tf.unstack(
            tf.cast(evaluation_resize_size(tf.shape(image)[:2], size, crop_ratio), tf.int32)
        )
        image = _resize(image, new_height, new_width)
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
    transform = pretrained.transform_for(variant, weights)
    return evaluation_transform(transform.size, transform.crop_ratio)
