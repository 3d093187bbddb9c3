"""The original evaluation transform, in TensorFlow for `tf.data` pipelines.

The original (`lib/dataset/transformas/build.py`, torchvision on PIL images) resizes bicubically;
the 224 models resize the short side to 224 / 0.875 = 256 and take the centre 224 x 224, the
384 models resize straight to 384 x 384.
"""

import tensorflow as tf

from keras_cvt import pretrained


def _resize(image, height, width):
    # PIL's bicubic filter widens when downscaling (antialias) and its uint8 output is clipped
    # and rounded; torchvision fed the original models exactly that.
    resized = tf.image.resize(image, tf.stack([height, width]), method="bicubic", antialias=True)
    return tf.round(tf.clip_by_value(resized, 0.0, 255.0))


def evaluation_transform(size=224, crop_ratio=0.875):
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
        resize_to = int(size / crop_ratio)
        height = tf.cast(tf.shape(image)[0], tf.float64)
        width = tf.cast(tf.shape(image)[1], tf.float64)
        # torchvision's Resize(int): the short side becomes `resize_to`, the long one is truncated.
        scale = resize_to / tf.minimum(height, width)
        new_height = tf.where(height <= width, resize_to, tf.cast(height * scale, tf.int32))
        new_width = tf.where(width < height, resize_to, tf.cast(width * scale, tf.int32))
        image = _resize(image, new_height, new_width)
        top = tf.cast(tf.round(tf.cast(new_height - size, tf.float32) / 2.0), tf.int32)
        left = tf.cast(tf.round(tf.cast(new_width - size, tf.float32) / 2.0), tf.int32)
        return tf.ensure_shape(image[top : top + size, left : left + size], (size, size, 3))

    return transform


def evaluation_transform_for(variant, weights):
    """The evaluation transform of a pretrained checkpoint, e.g. `("cvt13", "imagenet-384")`."""
    entry = pretrained.lookup(variant, weights)
    return evaluation_transform(entry.resolution, entry.crop_ratio)


def decode_image(encoded):
    """Decodes JPEG, PNG, BMP or GIF (its first frame) bytes as an RGB uint8 image."""
    return tf.io.decode_image(encoded, channels=3, expand_animations=False)


def load_image(path):
    """Reads and decodes an image file (JPEG, PNG, BMP, GIF's first frame) as RGB uint8."""
    return decode_image(tf.io.read_file(path))
