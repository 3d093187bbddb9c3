"""`CvTImageClassifierPreprocessor`: keras-hub's image classifier preprocessor with CvT's converter."""

import keras
from keras_hub.models import ImageClassifierPreprocessor

from keras_cvt.keras_hub.backbone import CvTBackbone
from keras_cvt.keras_hub.preprocessor.image_converter import CvTImageConverter


@keras.saving.register_keras_serializable(package="keras_cvt")
class CvTImageClassifierPreprocessor(ImageClassifierPreprocessor):
    backbone_cls = CvTBackbone
    image_converter_cls = CvTImageConverter
