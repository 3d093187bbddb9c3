"""The name keras_cvt 0.2 gave the SavedModel and TFLite exports, kept as an alias: they are now
`keras_cvt.export.saved_model` and `keras_cvt.export.tflite`."""

from keras_cvt.export.saved_model import (  # noqa: F401
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_REQUEST_PIXELS,
    IMAGES_SIGNATURE,
    PIXELS_SIGNATURE,
    PIXELS_UINT8_SIGNATURE,
    export_for_serving,
)
from keras_cvt.export.tflite import TFLITE_QUANTIZATIONS, TFLiteClassifier, export_tflite  # noqa: F401
