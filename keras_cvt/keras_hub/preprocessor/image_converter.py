"""`CvTImageConverter`: a checkpoint's exact evaluation transform as a keras-hub image converter."""

import keras
import tensorflow as tf
from keras_hub.layers import ImageConverter

from keras_cvt import declared, pretrained, transforms
from keras_cvt.keras_hub.backbone import CvTBackbone


CONVERTER_SOURCE = "CvTImageConverter's config (a preset's image_converter.json, or the copy in its task.json)"


@keras.saving.register_keras_serializable(package="keras_cvt")
class CvTImageConverter(ImageConverter):
    """Pixels in [0, 255] to a CvT's input, as the original evaluation made them: the short side
    resized to `size / crop_ratio` and the centre `size x size` cropped (or, with
    `crop_ratio=None`, a straight resize), PIL-like antialiased `interpolation`, rounded to
    uint8 levels, then normalised with `mean` and `std` (on pixels scaled to [0, 1]).

    Takes one image `(height, width, 3)` or a batch `(batch, height, width, 3)`.

    Args:
        image_size: `(size, size)`.
        crop_ratio, interpolation, mean, std: as in `keras_cvt.pretrained.EvaluationTransform`.
    """

    backbone_cls = CvTBackbone

    def __init__(
        self,
        image_size=(pretrained.DEFAULT_TRANSFORM.size,) * 2,
        crop_ratio=pretrained.DEFAULT_TRANSFORM.crop_ratio,
        interpolation=pretrained.DEFAULT_TRANSFORM.interpolation,
        mean=pretrained.IMAGENET_MEAN,
        std=pretrained.IMAGENET_STD,
        **kwargs,
    ):
        # Before anything is sized by them: a preset's image_converter.json, or the copy in its
        # task.json (the one keras-hub uses), declares them.
        declared.check_image_size(image_size, crop_ratio, CONVERTER_SOURCE)
        image_size = tuple(image_size)
        if len(image_size) != 2 or image_size[0] != image_size[1]:
            raise ValueError(f"`image_size` must be (size, size), got image_size={image_size!r}")
        self._transform = transforms.evaluation_transform(image_size[0], crop_ratio, interpolation)
        super().__init__(
            image_size=image_size,
            scale=[1.0 / (255.0 * s) for s in std],
            offset=[-m / s for m, s in zip(mean, std)],
            interpolation=interpolation,
            antialias=True,
            **kwargs,
        )
        self.crop_ratio, self.mean, self.std = crop_ratio, tuple(mean), tuple(std)

    @classmethod
    def from_config(cls, config):
        try:
            return super().from_config(config)
        except TypeError as error:
            # Keras' Layer.from_config turns every error of the constructor into a TypeError of
            # the whole config, which keras-hub's loaders nest twice more: the refusal of a
            # field is the one line to show.
            if isinstance(error.__context__, ValueError):
                raise error.__context__ from None
            raise

    @classmethod
    def from_transform(cls, transform, **kwargs):
        """The converter of a `keras_cvt.pretrained.EvaluationTransform`."""
        return cls(
            image_size=(transform.size, transform.size),
            crop_ratio=transform.crop_ratio,
            interpolation=transform.interpolation,
            mean=transform.mean,
            std=transform.std,
            **kwargs,
        )

    def call(self, inputs):
        images = tf.convert_to_tensor(inputs)
        if images.shape.rank == 3:
            images = self._transform(images)
        else:
            size = self.image_size[0]
            images = tf.map_fn(
                self._transform, images, fn_output_signature=tf.TensorSpec((size, size, 3), tf.float32)
            )
        return images * tf.constant(self.scale, tf.float32) + tf.constant(self.offset, tf.float32)

    def get_config(self):
        config = super().get_config()
        # Made from mean and std, which are saved instead.
        for derived in ("scale", "offset", "antialias", "crop_to_aspect_ratio", "pad_to_aspect_ratio"):
            config.pop(derived, None)
        config.update({"crop_ratio": self.crop_ratio, "mean": self.mean, "std": self.std})
        return config
