"""Input normalisation and prediction decoding, as in `keras.applications`."""

import functools
import importlib.resources

import numpy as np

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


@functools.cache
def imagenet_classes():
    """The 1000 ImageNet-1k classes in the order of the checkpoints' outputs.

    Returns a tuple of `(wordnet_id, names)`, `names` being WordNet's comma-separated
    lemmas (the labels of the HuggingFace checkpoints' `id2label`). Shipped with the package,
    so nothing is downloaded.
    """
    text = importlib.resources.files("keras_cvt").joinpath("data/imagenet_classes.tsv").read_text("utf-8")
    return tuple(tuple(line.split("\t")) for line in text.splitlines())


def decode_predictions(preds, top=5):
    """Decodes ImageNet-1k predictions into `(class_id, class_name, score)` tuples.

    Same contract as `keras.applications.imagenet_utils.decode_predictions` (class names are
    the first WordNet lemma, spaces as underscores, e.g. `"great_white_shark"`), but the
    labels ship with the package instead of being downloaded.

    Args:
        preds: array of shape `(samples, 1000)`: probabilities or logits.
        top: how many classes to return per sample.

    Returns:
        A list with, per sample, a list of `top` tuples, best first.
    """
    preds = np.asarray(preds)
    classes = imagenet_classes()
    if preds.ndim != 2 or preds.shape[1] != len(classes):
        raise ValueError(
            f"`preds` must have shape (samples, {len(classes)}) (ImageNet-1k predictions), "
            f"got shape {preds.shape}"
        )
    if not isinstance(top, int) or top < 1:
        raise ValueError(f"`top` must be a positive integer, got top={top!r}")
    results = []
    for row in preds:
        best = np.argsort(row)[::-1][:top]
        results.append(
            [(classes[i][0], classes[i][1].split(",")[0].replace(" ", "_"), float(row[i])) for i in best]
        )
    return results
