"""Input normalisation and prediction decoding, as in `keras.applications`."""

import functools
import importlib.resources

import numpy as np
from keras import ops

from keras_cvt.pretrained import IMAGENET_MEAN, IMAGENET_STD


def _check_data_format(data_format):
    if data_format not in (None, "channels_last"):
        raise ValueError(
            "CvT models take channels-last images whatever keras.config.image_data_format() "
            f"says: `data_format` must be None or 'channels_last', got data_format={data_format!r}"
        )


def preprocess_input(x, data_format=None):
    """A pass-through, as `keras.applications.convnext.preprocess_input` is.

    The builders' default `include_preprocessing=True` puts the ImageNet normalisation inside
    the model, which takes RGB pixels in [0, 255]; so the keras idiom
    `model.predict(preprocess_input(x))` gives the same result as `model.predict(x)`. For a
    model built with `include_preprocessing=False`, normalise with `imagenet_normalize`.

    Args:
        x: images, channels last: a NumPy array or a tensor.
        data_format: `None` or `"channels_last"` (CvT models take nothing else).

    Returns:
        `x`, unchanged.
    """
    _check_data_format(data_format)
    return x


def imagenet_normalize(x, data_format=None):
    """Normalises RGB pixels in [0, 255] with the ImageNet mean and standard deviation.

    What a model built with `include_preprocessing=False` expects, like the original PyTorch
    model. A model built with `include_preprocessing=True` (the default) does this itself:
    normalising its input as well would normalise twice.

    Args:
        x: RGB images, channels last, values in [0, 255]: a NumPy array (returned as float32
            NumPy) or a tensor of the Keras backend.
        data_format: `None` or `"channels_last"` (CvT models take nothing else).

    Returns:
        The normalised images, same shape.
    """
    _check_data_format(data_format)
    if isinstance(x, np.ndarray):
        x = x.astype("float32", copy=False)
    elif not hasattr(x, "shape"):
        x = np.asarray(x, "float32")
    else:
        x = ops.cast(x, "float32")
    # A last axis other than 3 would broadcast against the 3 statistics into a wrong result.
    if len(x.shape) < 1 or x.shape[-1] not in (3, None):
        raise ValueError(
            "`x` must be RGB images with 3 channels on the last axis, got shape "
            f"{tuple(x.shape)}"
        )
    mean = np.asarray(IMAGENET_MEAN, "float32") * 255.0
    std = np.asarray(IMAGENET_STD, "float32") * 255.0
    return (x - mean) / std


@functools.cache
def imagenet_classes():
    """The 1000 ImageNet-1k classes in the order of the checkpoints' outputs.

    Returns a tuple of `(wordnet_id, names)`, `names` being WordNet's comma-separated
    lemmas (the labels of the HuggingFace checkpoints' `id2label`). Shipped with the package,
    so nothing is downloaded.
    """
    text = importlib.resources.files("keras_cvt").joinpath("data/imagenet_classes.tsv").read_text("utf-8")
    return tuple(tuple(line.split("\t")) for line in text.splitlines())


def decode_predictions(preds, top=5, labels=None):
    """Decodes ImageNet-1k predictions into `(class_id, class_name, score)` tuples.

    With `labels` (the class names in class order, e.g. `keras_cvt.hf.labels("hf://owner/repo")`,
    a hub repo's `id2label`), decodes any classifier's predictions: `class_id` is then the
    class number as a string and `class_name` the label as it is.

    Same contract as `keras.applications.imagenet_utils.decode_predictions` (class names are
    the first WordNet lemma, spaces as underscores, e.g. `"great_white_shark"`), but the
    labels ship with the package instead of being downloaded.

    Args:
        preds: array of shape `(samples, 1000)`: probabilities or logits.
        top: how many classes to return per sample.
        labels: None for ImageNet-1k, or one string per class.

    Returns:
        A list with, per sample, a list of `top` tuples, best first.
    """
    preds = np.asarray(preds)
    if labels is None:
        classes = tuple((wnid, names.split(",")[0].replace(" ", "_")) for wnid, names in imagenet_classes())
    else:
        classes = tuple((str(i), str(label)) for i, label in enumerate(labels))
    if preds.ndim != 2 or preds.shape[1] != len(classes):
        kind = "ImageNet-1k predictions" if labels is None else "one column per label"
        raise ValueError(f"`preds` must have shape (samples, {len(classes)}) ({kind}), got shape {preds.shape}")
    if not isinstance(top, int) or top < 1:
        raise ValueError(f"`top` must be a positive integer, got top={top!r}")
    results = []
    for row in preds:
        best = np.argsort(row)[::-1][:top]
        results.append(
            [(classes[i][0], classes[i][1], float(row[i])) for i in best]
        )
    return results
