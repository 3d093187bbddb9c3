"""Input normalisation and prediction decoding, as in `keras.applications`."""

import numpy as np
from keras.applications import imagenet_utils

# The statistics the original checkpoints were trained with (RGB, on pixels scaled to [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def preprocess_input(x, data_format=None):
    """Normalises RGB pixels in [0, 255] with the ImageNet mean and standard deviation.

    For models built with `include_preprocessing=False`, which expect what the original
    PyTorch model expects. Models built with `include_preprocessing=True` (the default) do
    this themselves and take raw pixels.

    Args:
        x: a float NumPy array or tensor of RGB images, channels last, values in [0, 255].
        data_format: only `"channels_last"` (or `None`) is supported.

    Returns:
        The normalised images, same shape.
    """
    if data_format not in (None, "channels_last"):
        raise ValueError(f"`data_format` must be 'channels_last', got data_format={data_format!r}")
    if isinstance(x, np.ndarray):
        x = x.astype("float32", copy=False)
    mean = np.asarray(IMAGENET_MEAN, "float32") * 255.0
    std = np.asarray(IMAGENET_STD, "float32") * 255.0
    return (x - mean) / std


def decode_predictions(preds, top=5):
    """Decodes ImageNet-1k predictions into `(class_id, class_name, score)` tuples.

    Same contract as `keras.applications.imagenet_utils.decode_predictions`.
    """
    return imagenet_utils.decode_predictions(preds, top=top)
