"""CvT (Convolutional vision Transformer) for Keras, shaped like `keras.applications`.

The package is layered one way (see README, "Layout"): `layers` -> `builder` (the generic
`CvT`) -> `weights_conversion` (reading original checkpoints) -> `variants` (`CvT13`, ...,
with `pretrained` weights from the `cache`) -> `inference`, `export`, `training`.

Names are imported on first use, so `import keras_cvt` costs little and imports no TensorFlow:
under the JAX or PyTorch backend, building and running a model never does. Only the layers are
imported at once, so that a `.keras` file loads after a plain `import keras_cvt`.
"""

import importlib

from keras_cvt import architectures
from keras_cvt import layers as _layers  # noqa: F401 (registers the layers with Keras)
from keras_cvt._version import __version__
from keras_cvt.inference import layers as _inference_layers  # noqa: F401 (the same, folded)

# Public name -> the module that defines it.
_EXPORTS = {
    "CvT": "keras_cvt.builder",
    **{variant.builder: "keras_cvt.variants" for variant in architectures.VARIANTS.values()},
    "MODEL_CONFIGS": "keras_cvt.architectures",
    "ClassToken": "keras_cvt.layers",
    "ConvAttention": "keras_cvt.layers",
    "ConvEmbedding": "keras_cvt.layers",
    "CvTBlock": "keras_cvt.layers",
    "LayerNorm": "keras_cvt.layers",
    "StochasticDepth": "keras_cvt.layers",
    "FrozenFunction": "keras_cvt.inference.frozen",
    "freeze_for_inference": "keras_cvt.inference.frozen",
    "optimize_for_inference": "keras_cvt.inference.fold",
    "decode_predictions": "keras_cvt.preprocessing",
    "imagenet_normalize": "keras_cvt.preprocessing",
    "preprocess_input": "keras_cvt.preprocessing",
    "available_weights": "keras_cvt.pretrained",
    "from_hf": "keras_cvt.hf",
    # keras-hub's (the `hub` extra): importing them imports keras-hub.
    "CvTBackbone": "keras_cvt.keras_hub",
    "CvTImageClassifier": "keras_cvt.keras_hub",
    "TFLiteClassifier": "keras_cvt.export.tflite",
    "export_for_serving": "keras_cvt.export.saved_model",
    "export_tflite": "keras_cvt.export.tflite",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'keras_cvt' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
