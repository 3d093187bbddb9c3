"""The evaluation transform against what torchvision/PIL fed the original models."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_cvt.transforms import evaluation_transform, evaluation_transform_for, load_image


def _pil_reference(image, size, crop_ratio):
    """torchvision's Resize(int | (size, size), BICUBIC) + CenterCrop, on a PIL image."""
    pil = Image.fromarray(image)
    if crop_ratio is None:
        return np.asarray(pil.resize((size, size), Image.BICUBIC))
    width, height = pil.size
    short = int(size / crop_ratio)
    if width <= height:
        new_size = (short, int(short * height / width))
    else:
        new_size = (int(short * width / height), short)
    resized = np.asarray(pil.resize(new_size, Image.BICUBIC))
    top = int(round((new_size[1] - size) / 2.0))
    left = int(round((new_size[0] - size) / 2.0))
    return resized[top : top + size, left : left + size]


def _photo_like(height, width, seed=0):
    """Smooth random image: bicubic detail at several scales, like a photo rather than noise."""
    coarse = np.random.RandomState(seed).randint(0, 256, (max(height // 12, 2), max(width // 12, 2), 3))
    return np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((width, height), Image.BICUBIC))


@pytest.mark.parametrize(
    "shape,size,crop_ratio",
    [((375, 500), 224, 0.875), ((640, 427), 224, 0.875), ((1000, 1300), 224, 0.875), ((300, 500), 384, None)],
)
def test_matches_pil_within_one_level(shape, size, crop_ratio):
    image = _photo_like(*shape)
    ours = evaluation_transform(size, crop_ratio)(image).numpy()
    reference = _pil_reference(image, size, crop_ratio).astype(np.float32)
    assert ours.shape == (size, size, 3) and ours.dtype == np.float32
    difference = np.abs(ours - reference)
    assert difference.max() <= 2.0
    assert difference.mean() <= 0.5


def test_transform_for_pretrained_weights():
    image = _photo_like(300, 400)
    assert evaluation_transform_for("cvt13", "imagenet")(image).shape == (224, 224, 3)
    assert evaluation_transform_for("cvt21", "imagenet-384")(image).shape == (384, 384, 3)
    with pytest.raises(ValueError, match="weights"):
        evaluation_transform_for("cvtw24", "imagenet-384")


def test_in_tf_data_with_mixed_sizes():
    images = [_photo_like(200, 300, 1), _photo_like(260, 180, 2)]
    dataset = tf.data.Dataset.from_generator(
        lambda: iter(images), output_signature=tf.TensorSpec((None, None, 3), tf.uint8)
    )
    batch = next(iter(dataset.map(evaluation_transform(224)).batch(2)))
    assert batch.shape == (2, 224, 224, 3)


def test_load_image_png_and_jpeg(tmp_path):
    image = _photo_like(50, 70)
    Image.fromarray(image).save(tmp_path / "a.png")
    Image.fromarray(image).save(tmp_path / "a.jpg", quality=95)
    np.testing.assert_array_equal(load_image(str(tmp_path / "a.png")).numpy(), image)
    assert np.abs(load_image(str(tmp_path / "a.jpg")).numpy().astype(float) - image).mean() < 3.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="size"):
        evaluation_transform(0)
    with pytest.raises(ValueError, match="crop_ratio"):
        evaluation_transform(224, crop_ratio=1.5)
