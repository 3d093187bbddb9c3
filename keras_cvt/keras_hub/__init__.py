"""keras-hub integration (the optional extra `keras-cvt[hub]`): `CvTBackbone`,
`CvTImageClassifier`, their preprocessor and image converter, and presets for the seven
original checkpoints. Importing it imports keras-hub (`import keras_cvt` does not) and
registers these classes with Keras, which `keras_hub.models.ImageClassifier.from_preset(directory)`
needs to load a saved CvT preset.
"""

from keras_cvt.keras_hub.backbone import CvTBackbone
from keras_cvt.keras_hub.classifier import CvTImageClassifier
from keras_cvt.keras_hub.preprocessor.image_classifier_preprocessor import CvTImageClassifierPreprocessor
from keras_cvt.keras_hub.preprocessor.image_converter import CvTImageConverter

__all__ = ["CvTBackbone", "CvTImageClassifier", "CvTImageClassifierPreprocessor", "CvTImageConverter"]
