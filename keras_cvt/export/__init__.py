"""Exports of CvT classifiers for the runtimes people deploy to, each a module of its own:

- `saved_model`: a TF Serving SavedModel that takes encoded images (`export_for_serving`);
- `tflite`: a LiteRT (TFLite) file, pixels in, probabilities out (`export_tflite`,
  `TFLiteClassifier`).

Each writes through `keras_cvt.atomic`, so a failed export leaves nothing behind, and wraps the
model in `classifier.Classifier` (its folded inference form, pixels in [0, 255] in,
probabilities out). The command line is `python -m keras_cvt.export` (`keras_cvt.export.cli`).
"""

from keras_cvt.export.saved_model import export_for_serving
from keras_cvt.export.tflite import TFLiteClassifier, export_tflite

__all__ = ["TFLiteClassifier", "export_for_serving", "export_tflite"]
