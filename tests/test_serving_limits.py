"""Serving under hostile images: the per-image pixel limit, bounded memory, palette and odd BMPs."""

import io
import json
import os
import struct
import textwrap
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_cvt import CvT, export_for_serving, serving
from keras_cvt.export import cli as export_cli
from keras_cvt.export import saved_model
from tests.conftest import TINY_CONFIG
from tests.test_serving import run_script

# The case: 224 with the 0.875 crop, so the short side is resized to 256.
SIZE = 224
RED = (204, 0, 51)
# Peak resident memory a refused request may add. Serving the 1 x 16000 PNG without the limit
# took 7 GB (12.6 GB to finish); a 224 x 224 request of the tiny model adds a few tens of MB.
MEMORY_ALLOWANCE = 300 * 2**20


def _encode(image, fmt, **options):
    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buffer, fmt, **options)
    return buffer.getvalue()


def _png_claiming(height, width):
    """A PNG whose header declares height x width, and nothing after the header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


def _photo(height, width, seed=0):
    coarse = np.random.RandomState(seed).randint(0, 256, (max(height // 8, 2), max(width // 8, 2), 3))
    return np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((width, height), Image.BICUBIC))


def _palette_bmp():
    """An 8-bit BMP (Pillow's "P" mode): a smooth four-colour picture with a red square."""
    indices = (_photo(48, 64)[..., 0] // 64).astype(np.uint8)
    indices[10:20, 30:40] = 4
    image = Image.fromarray(indices, "P")
    image.putpalette([20, 90, 160, 250, 240, 200, 0, 120, 40, 90, 60, 30, *RED])
    return _encode(image, "BMP")


@pytest.fixture(scope="module")
def exported(tiny_reference, tmp_path_factory):
    path, _, _ = tiny_reference
    model = CvT(**TINY_CONFIG, weights=path, input_shape=(None, None, 3))
    target = tmp_path_factory.mktemp("models") / "tiny" / "1"
    export_for_serving(model, target, image_size=SIZE, top_k=3)
    return target


@pytest.fixture(scope="module")
def serve(exported):
    signature = tf.saved_model.load(str(exported)).signatures["serving_default"]
    return lambda images: signature(images=tf.constant(images, tf.string))


def _refusal(serve, images):
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        serve(images)
    return next(line for line in error.value.message.splitlines() if "`images`[" in line)


# Runs in its own process, so that its peak resident memory (VmHWM) is the requests' alone.
MEMORY_PROBE = textwrap.dedent(
    """
    import json, resource, sys
    import numpy as np
    import tensorflow as tf

    def status(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

    request = json.loads(sys.argv[1])
    serve = tf.saved_model.load(request["model"]).signatures["serving_default"]
    batches = {name: [open(path, "rb").read() for path in paths] for name, paths in request["batches"].items()}
    serve(images=tf.constant(batches.pop("warm-up")))
    start = status("VmHWM")
    # A safety net should the limit ever break: allocations fail instead of taking the
    # machine's memory (the unbounded 1 x 16000 PNG would take 12.6 GB).
    hard = resource.getrlimit(resource.RLIMIT_DATA)[1]
    soft = status("VmData") + 4 * 2**30
    resource.setrlimit(resource.RLIMIT_DATA, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))
    errors = {}
    for name, images in batches.items():
        try:
            serve(images=tf.constant(images))
            errors[name] = None
        except tf.errors.InvalidArgumentError as error:
            errors[name] = [line for line in error.message.splitlines() if "`images`[" in line][0]
    print(json.dumps({"start": start, "peak": status("VmHWM"), "errors": errors}))
    """
)


@pytest.mark.slow
def test_hostile_images_are_refused_with_bounded_memory(exported, tmp_path):
    files = {
        "photo.jpg": _encode(_photo(300, 400), "JPEG"),
        # 131 bytes that the short-side resize to 256 made 256 x 4,096,000 float32 pixels.
        "long.png": _encode(np.zeros((1, 16000, 3), np.uint8), "PNG"),
        "claims-60000.png": _png_claiming(60000, 60000),
        "claims-20000.png": _png_claiming(20000, 20000),
        # 43 megapixels each, under the per-image limit: three of them exceed the request's.
        "claims-43mp.png": _png_claiming(6000, 7200),
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    assert len(files["long.png"]) < 200
    batches = {
        "warm-up": ["photo.jpg"],
        "long": ["long.png"],
        "claims-60000": ["claims-60000.png"],
        # Several hostile images in one request, decoded in parallel: each is bounded.
        "several": ["photo.jpg"] + ["long.png"] * 4 + ["photo.jpg"],
        "several-claims": ["photo.jpg", "claims-20000.png", "claims-60000.png", "claims-20000.png"],
        "request": ["photo.jpg"] + ["claims-43mp.png"] * 3,
    }
    request = {
        "model": str(exported),
        "batches": {name: [str(tmp_path / f) for f in names] for name, names in batches.items()},
    }
    result = run_script(MEMORY_PROBE, request, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    errors = report["errors"]
    limit = f"the limit of {serving.DEFAULT_MAX_PIXELS} pixels"
    assert errors["long"].startswith("assertion failed: [`images`[0] (1 x 16000 pixels")
    assert f"would be resized to 256 x 4096000 = 1048576000 pixels before its centre crop, more than {limit}" in (
        errors["long"]
    )
    assert "`images`[0] is 60000 x 60000 = 3600000000 pixels (height x width), more than " + limit in (
        errors["claims-60000"]
    )
    assert "`images`[1] (1 x 16000 pixels" in errors["several"]
    assert "`images`[1] is 20000 x 20000 = 400000000 pixels" in errors["several-claims"]
    # Refused from the headers, before decoding: 300 x 400 + 256 x 341, then 3 x (6000 x 7200 + 256 x 307).
    assert errors["request"].startswith(
        f"assertion failed: [`images`[3] brings the request to {120000 + 87296 + 3 * (43200000 + 78592)} pixels"
    )
    grown = report["peak"] - report["start"]
    print(f"peak resident memory grew by {grown / 2**20:.0f} MB over the refused requests")
    assert grown < MEMORY_ALLOWANCE


def test_default_limit_is_counted_from_the_header(serve):
    photo = _encode(_photo(300, 400), "JPEG")
    # Headers alone, with no pixel data: over the limit they are refused from the header; under
    # it they reach the decoder, which finds them truncated.
    over = _png_claiming(10000, 5001)
    at_limit = _png_claiming(10000, 5000)
    assert 10000 * 5000 == serving.DEFAULT_MAX_PIXELS
    assert _refusal(serve, [photo, over]).startswith(
        "assertion failed: [`images`[1] is 10000 x 5001 = 50010000 pixels (height x width), more than the "
        f"limit of {serving.DEFAULT_MAX_PIXELS} pixels this model was exported with (max_pixels)]"
    )
    assert "`images`[1] could not be decoded" in _refusal(serve, [photo, at_limit])
    # The aspect ratios the 256 short side allows: 1 x 762 becomes 256 x 195072 (49,938,432
    # pixels), 1 x 763 would become 256 x 195328 (50,003,968).
    assert "`images`[1] could not be decoded" in _refusal(serve, [photo, _png_claiming(1, 762)])
    assert _refusal(serve, [_png_claiming(763, 1), photo]).startswith(
        "assertion failed: [`images`[0] (763 x 1 pixels, height x width) would be resized to 195328 x 256 = "
        "50003968 pixels before its centre crop"
    )


@pytest.mark.slow
def test_limit_set_at_export_bounds_decoded_images(tiny_reference, tmp_path):
    path, _, _ = tiny_reference
    model = CvT(**TINY_CONFIG, weights=path, input_shape=(None, None, 3))
    with pytest.raises(ValueError, match=r"`max_pixels` must be an integer of at least 5329 \(the 73 x 73"):
        export_for_serving(model, tmp_path / "1", image_size=64, max_pixels=5328)
    with pytest.raises(ValueError, match="max_pixels"):
        export_for_serving(model, tmp_path / "1", image_size=64, max_pixels=1e6)
    with pytest.raises(ValueError, match=r"`max_request_pixels` must be an integer of at least 10658 \(a 73 x 73"):
        export_for_serving(model, tmp_path / "1", image_size=64, max_request_pixels=10657)
    assert os.listdir(tmp_path) == []
    export_for_serving(model, tmp_path / "1", image_size=64, crop_ratio=None, max_pixels=120_000, max_request_pixels=250_000)
    signature = tf.saved_model.load(str(tmp_path / "1")).signatures["serving_default"]
    serve = lambda images: signature(images=tf.constant(images))  # noqa: E731
    # Each format's header (lossy WebP is VP8, lossless VP8L, with Exif VP8X): 300 x 400 is at the
    # limit, one row more is over.
    formats = (
        ("JPEG", {}), ("PNG", {}), ("GIF", {}), ("BMP", {}),
        ("WEBP", {}), ("WEBP", {"lossless": True}), ("WEBP", {"exif": b"Exif\0\0"}),
    )
    for fmt, options in formats:
        at_limit = _encode(_photo(300, 400), fmt, **options)
        over = _encode(_photo(301, 400), fmt, **options)
        assert serve([at_limit, at_limit])["scores"].shape == (2, 5), fmt
        # Each 300 x 400 image and its 64 x 64 resize: two fit in 250,000 pixels, three do not.
        assert _refusal(serve, [at_limit, at_limit, at_limit]).startswith(
            "assertion failed: [`images`[2] brings the request to 372288 pixels"
        ), fmt
        assert _refusal(serve, [at_limit, over]).startswith(
            "assertion failed: [`images`[1] is 301 x 400 = 120400 pixels (height x width), more than the "
            "limit of 120000 pixels"
        ), (fmt, options)


def test_a_request_is_bounded_as_a_whole_before_decoding(serve):
    photo = _encode(_photo(300, 400), "JPEG")
    # Headers alone: an image within the budget would reach the decoder and be found truncated;
    # the request's budget is checked first, from the headers.
    claim = _png_claiming(6000, 7200)  # 43 megapixels, and 256 x 307 after the short-side resize
    cost = 6000 * 7200 + 256 * 307
    assert saved_model.DEFAULT_MAX_REQUEST_PIXELS == 2 * serving.DEFAULT_MAX_PIXELS
    assert _refusal(serve, [photo, claim, claim, claim]) == (
        f"assertion failed: [`images`[3] brings the request to {120000 + 87296 + 3 * cost} pixels (the pixels of "
        "each image and of its resize, summed over `images`[0] to `images`[3]), more than the limit of 100000000 "
        "pixels per request this model was exported with (max_request_pixels): send fewer or smaller images "
        "per request]"
    )
    assert "`images`[1] could not be decoded" in _refusal(serve, [photo, claim, claim])
    # An image over the per-image limit is not counted: it gets its own message.
    assert "`images`[1] is 10000 x 5001" in _refusal(serve, [photo, _png_claiming(10000, 5001), photo])


def test_palette_bmp_is_served_in_its_colours(serve):
    palette = _palette_bmp()
    assert palette[28] == 8  # bits per pixel: a colour table, not grey levels
    rgb = np.asarray(Image.open(io.BytesIO(palette)).convert("RGB"))
    assert tuple(rgb[15, 35]) == RED
    # What TensorFlow's own decoder makes of it: the colour index as a grey level.
    assert tuple(tf.io.decode_image(palette, channels=3)[15, 35].numpy()) == (4, 4, 4)
    served = serve([palette, _encode(rgb, "PNG")])
    np.testing.assert_array_equal(served["classes"][0], served["classes"][1])
    np.testing.assert_allclose(served["scores"][0], served["scores"][1], rtol=0, atol=1e-6)


def test_bmps_the_decoder_would_misread_are_refused(serve):
    photo = _encode(_photo(40, 40), "PNG")
    rle = bytearray(_palette_bmp())
    rle[30:34] = (1).to_bytes(4, "little")  # BI_RLE8: TensorFlow would read the runs as pixels
    sixteen_bits = bytearray(_encode(_photo(8, 8), "BMP"))
    sixteen_bits[28:30] = (16).to_bytes(2, "little")
    for bad in (rle, sixteen_bits):
        assert _refusal(serve, [photo, bytes(bad), photo]).startswith(
            "assertion failed: [`images`[1] is a BMP of a kind the decoder cannot read or would misread "
            "(compressed, 1, 4 or 16 bits per pixel"
        )


def test_cli_max_pixels(monkeypatch, tmp_path, capsys):
    calls = []

    def record(model, path, **kwargs):
        calls.append(kwargs)
        return str(path)

    monkeypatch.setattr(export_cli, "classifier_for_export", lambda variant, weights: None)
    monkeypatch.setattr(saved_model, "export_for_serving", record)
    argv = ["--model", "cvt13", "--weights", "imagenet", "--output", str(tmp_path / "1")]
    assert export_cli.main(argv) == 0
    assert export_cli.main(argv + ["--max-pixels", "20000000", "--max-request-pixels", "60000000"]) == 0
    assert [call["max_pixels"] for call in calls] == [serving.DEFAULT_MAX_PIXELS, 20_000_000]
    assert [call["max_request_pixels"] for call in calls] == [serving.DEFAULT_MAX_REQUEST_PIXELS, 60_000_000]
    assert "at most 20,000,000 pixels per image, 60,000,000 per request" in capsys.readouterr().out
    for flag in ("--max-pixels", "--max-request-pixels"):
        for bad in ("0", "-5", "1e6"):
            with pytest.raises(SystemExit) as exit_info:
                export_cli.main(argv + [flag, bad])
            assert exit_info.value.code == 2
            assert f"{flag}: expected a positive integer, got {bad!r}" in capsys.readouterr().err
