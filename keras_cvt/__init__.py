"""CvT (Convolutional vision Transformer) for Keras, shaped like `keras.applications`."""

from keras_cvt._version import __version__
from keras_cvt.cvt import CvT, CvT13, CvT21, CvTW24, MODEL_CONFIGS
from keras_cvt.frozen import FrozenFunction, freeze_for_inference
from keras_cvt.inference import optimize_for_inference
from keras_cvt.layers import (
    ClassToken,
    ConvAttention,
    ConvEmbedding,
    CvTBlock,
    HeadProjection,
    LayerNorm,
    StochasticDepth,
)
from keras_cvt.preprocessing import decode_predictions, imagenet_normalize, preprocess_input
from keras_cvt.pretrained import available_weights
from keras_cvt.serving import TFLiteClassifier, export_for_serving, export_tflite

__all__ = [
    "__version__",
    "CvT",
    "CvT13",
    "CvT21",
    "CvTW24",
    "MODEL_CONFIGS",
    "ClassToken",
    "ConvAttention",
    "ConvEmbedding",
    "FrozenFunction",
    "CvTBlock",
    "HeadProjection",
    "LayerNorm",
    "StochasticDepth",
    "TFLiteClassifier",
    "available_weights",
    "decode_predictions",
    "export_for_serving",
    "export_tflite",
    "freeze_for_inference",
    "imagenet_normalize",
    "optimize_for_inference",
    "preprocess_input",
]
