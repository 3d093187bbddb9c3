"""The evaluation transform against what torchvision/PIL fed the original models, and decoding."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_cvt import pretrained
from keras_cvt.images import decode_image, inspect_encoded_image, load_image
from keras_cvt.transforms import evaluation_resize_size, evaluation_transform, evaluation_transform_for, from_record

PIL_FILTERS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}


def _pil_reference(image, size, crop_ratio, interpolation="bicubic"):
    """torchvision's Resize(int | (size, size), filter) + CenterCrop, on a PIL image."""
    pil = Image.fromarray(image)
    resample = PIL_FILTERS[interpolation]
    if crop_ratio is None:
        return np.asarray(pil.resize((size, size), resample))
    width, height = pil.size
    short = int(size / crop_ratio)
    if width <= height:
        new_size = (short, int(short * height / width))
    else:
        new_size = (int(short * width / height), short)
    resized = np.asarray(pil.resize(new_size, resample))
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


def test_the_records_filter_is_used():
    # The record's `interpolation` reaches the resize: bilinear matches PIL's bilinear, and
    # differs from the bicubic default.
    image = _photo_like(375, 500)
    record = pretrained.EvaluationTransform(224, 0.875, "bilinear")
    ours = from_record(record)(image).numpy()
    reference = _pil_reference(image, 224, 0.875, "bilinear").astype(np.float32)
    assert np.abs(ours - reference).max() <= 2.0 and np.abs(ours - reference).mean() <= 0.5
    assert np.abs(ours - evaluation_transform(224, 0.875)(image).numpy()).max() > 2.0


def test_transform_for_pretrained_weights():
    image = _photo_like(300, 400)
    assert evaluation_transform_for("cvt13", "imagenet")(image).shape == (224, 224, 3)
    assert evaluation_transform_for("cvt21", "imagenet-384")(image).shape == (384, 384, 3)
    for p in pretrained.PRETRAINED:
        np.testing.assert_array_equal(
            evaluation_transform_for(p.variant, p.name)(image).numpy(),
            evaluation_transform(p.resolution, p.transform.crop_ratio)(image).numpy(),
        )
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
    with pytest.raises(ValueError, match=r"`interpolation` must be one of \('bicubic', 'bilinear'\), got interpolation='lanczos'"):
        evaluation_transform(224, interpolation="lanczos")
    with pytest.raises(TypeError, match="`transform` must be a keras_cvt.pretrained.EvaluationTransform, got 224"):
        from_record(224)


def _encode(image, fmt, **options):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def test_palette_bmp_decodes_in_its_colours():
    indices = np.zeros((5, 7), np.uint8)
    indices[2, 3] = 1
    image = Image.fromarray(indices, "P")
    image.putpalette([10, 200, 30, 204, 0, 51])
    bmp = _encode(image, "BMP")
    assert bmp[28] == 8  # bits per pixel: indices into the colour table
    decoded = decode_image(bmp).numpy()
    np.testing.assert_array_equal(decoded, np.asarray(image.convert("RGB")))
    assert tuple(decoded[2, 3]) == (204, 0, 51) and tuple(decoded[0, 0]) == (10, 200, 30)
    # Pillow's greyscale BMPs are 8-bit with a grey ramp for a table.
    grey = Image.fromarray(_photo_like(6, 9)).convert("L")
    np.testing.assert_array_equal(decode_image(_encode(grey, "BMP")).numpy(), np.asarray(grey.convert("RGB")))


def _with_bitfields(bmp, masks):
    """A 32-bit BI_RGB BMP rewritten as BI_BITFIELDS with the given (red, green, blue) masks."""
    bmp = bytearray(bmp)
    bmp[30:34] = (3).to_bytes(4, "little")
    bmp[10:14] = (int.from_bytes(bmp[10:14], "little") + 12).to_bytes(4, "little")
    bmp = bmp[:54] + b"".join(mask.to_bytes(4, "little") for mask in masks) + bmp[54:]
    bmp[2:6] = len(bmp).to_bytes(4, "little")
    return bytes(bmp)


def test_bmps_the_decoder_would_misread_raise():
    image = Image.fromarray(_photo_like(6, 9)).convert("RGBA")
    plain = _encode(image, "BMP")
    assert plain[28] == 32 and plain[30] == 0
    expected = np.asarray(image.convert("RGB"))
    bgra = _with_bitfields(plain, (0x00FF0000, 0x0000FF00, 0x000000FF))
    np.testing.assert_array_equal(decode_image(bgra).numpy(), expected)
    rgba = _with_bitfields(plain, (0x000000FF, 0x0000FF00, 0x00FF0000))
    # TensorFlow alone would swap red and blue without a word.
    np.testing.assert_array_equal(tf.io.decode_image(rgba, channels=3).numpy(), expected)
    rle = bytearray(_encode(Image.fromarray(np.zeros((4, 4), np.uint8), "P"), "BMP"))
    rle[30:34] = (1).to_bytes(4, "little")
    sixteen_bits = bytearray(plain)
    sixteen_bits[28:30] = (16).to_bytes(2, "little")
    for bad in (rgba, bytes(rle), bytes(sixteen_bits)):
        assert not inspect_encoded_image(bad)[1].numpy()
        with pytest.raises(tf.errors.InvalidArgumentError, match="unsupported BMP: compressed, 1, 4 or 16 bits"):
            decode_image(bad)


@pytest.mark.parametrize(
    "fmt,options",
    [
        ("JPEG", {}), ("PNG", {}), ("GIF", {}), ("BMP", {}),
        ("WEBP", {}), ("WEBP", {"lossless": True}), ("WEBP", {"exif": b"Exif\0\0"}),
    ],
    ids=["jpeg", "png", "gif", "bmp", "webp-lossy", "webp-lossless", "webp-extended"],
)
def test_inspect_reads_the_size_from_the_header(fmt, options):
    encoded = _encode(Image.fromarray(_photo_like(37, 53)), fmt, **options)
    height_width, decodable = inspect_encoded_image(encoded)
    assert height_width.numpy().tolist() == [37, 53] and decodable.numpy()
    assert decode_image(encoded).shape == (37, 53, 3)
    # The header alone is enough: the first 100 bytes (JPEG: its markers up to the scan).
    cut = encoded.index(b"\xff\xda") + 14 if fmt == "JPEG" else 100
    assert inspect_encoded_image(encoded[:cut])[0].numpy().tolist() == [37, 53]


def test_top_down_bmp_and_unknown_formats():
    bmp = bytearray(_encode(Image.fromarray(_photo_like(6, 9)), "BMP"))
    bmp[22:26] = (-6).to_bytes(4, "little", signed=True)
    assert inspect_encoded_image(bytes(bmp))[0].numpy().tolist() == [6, 9]
    for unknown in (b"", b"not an image", b"\x89PNG"):
        assert inspect_encoded_image(unknown)[0].numpy().tolist() == [0, 0]


def test_resize_size_is_the_transform_resize():
    # torchvision's Resize(256): the short side to 256, the long one scaled and truncated.
    assert evaluation_resize_size([375, 500]).numpy().tolist() == [256, 341]
    assert evaluation_resize_size([640, 427]).numpy().tolist() == [383, 256]
    assert evaluation_resize_size([1, 16000]).numpy().tolist() == [256, 4096000]
    assert evaluation_resize_size([60000, 60000], 384, None).numpy().tolist() == [384, 384]
