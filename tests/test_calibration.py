"""Calibration images of the int8 exports (keras_cvt.export.calibration): a folder, the photos
shipped in the package, a TensorFlow Datasets split; each through the evaluation transform,
and what each refuses."""

import configparser
import fnmatch
import struct
import sys
import zlib

import numpy as np
import pytest
import tensorflow as tf

from keras_cvt import images, transforms
from keras_cvt.export import calibration
from tests.conftest import ROOT

# The test dataset's images (height, width): every one a size of its own.
TFDS_SIZES = [(40, 50), (64, 48), (33, 33), (20, 90), (50, 50)]


def write_png(path, height, width, pixels=None):
    """A PNG file; with `pixels` None, one whose header claims `height` x `width` and whose data
    is a few bytes (a file that lies about its size)."""
    if pixels is not None:
        tf.io.write_file(str(path), tf.io.encode_png(pixels))
        return path

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 7)))
    return path


def _escaped(message):
    return message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")


@pytest.fixture
def image_folder(tmp_path):
    folder = tmp_path / "images"
    (folder / "b").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, (height, width) in enumerate([(40, 50), (64, 48), (33, 33)]):
        write_png(folder / ("b" if i else "") / f"{i}.png", height, width, rng.integers(0, 256, (height, width, 3), np.uint8))
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_calibration_pixels_read_every_image_through_the_transform(image_folder):
    pixels = calibration.calibration_pixels(image_folder, size=24, crop_ratio=0.875, count=10)
    paths = calibration.list_calibration_images(image_folder)
    assert [p.split("images")[-1] for p in paths] == ["/0.png", "/b/1.png", "/b/2.png"]
    transform = transforms.evaluation_transform(24, 0.875)
    wanted = np.stack([transform(images.load_image(p)).numpy() for p in paths])
    assert pixels.shape == (3, 24, 24, 3) and pixels.dtype == np.float32
    np.testing.assert_array_equal(pixels, wanted)
    # Fewer than the folder holds: drawn at random, each once.
    two = calibration.calibration_pixels(image_folder, size=24, crop_ratio=0.875, count=2)
    assert two.shape == (2, 24, 24, 3)
    assert all(any(np.array_equal(p, w) for w in wanted) for p in two)
    # The transform's filter is the caller's (a checkpoint's record names it).
    bilinear = calibration.calibration_pixels(image_folder, size=24, count=10, interpolation="bilinear")
    np.testing.assert_array_equal(
        bilinear, np.stack([transforms.evaluation_transform(24, 0.875, "bilinear")(images.load_image(p)) for p in paths])
    )
    assert not np.array_equal(bilinear, pixels)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda folder: folder / "missing", "calibration folder not found"),
        (lambda folder: (folder / "notes.txt"), "calibration folder not found (or not a folder)"),
        (lambda folder: (folder / "b" / "1.png").unlink() or (folder / "b" / "2.png").unlink() or
         (folder / "0.png").unlink() or folder, "has no images"),
        (lambda folder: (folder / "b" / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage") and folder, "bad.jpg"),
        (lambda folder: (folder / "b" / "text.png").write_text("hello") and folder, "text.png' does not decode"),
        (lambda folder: write_png(folder / "huge.png", 100_000, 100_000) and folder, "huge.png' is 100000 x 100000"),
        (lambda folder: (folder / "cut.png").write_bytes((folder / "0.png").read_bytes()[:60]) and folder,
         "cut.png' does not decode"),
    ],
    ids=["missing", "a file", "no images", "corrupt jpeg", "not an image", "lying header", "truncated"],
)
def test_calibration_folder_refusals(image_folder, make, message):
    with pytest.raises(ValueError, match=_escaped(message)):
        calibration.calibration_pixels(make(image_folder), size=24, count=10)


@pytest.mark.parametrize("count", [0, -1, 2.5, "3", True, calibration.MAX_CALIBRATION_SIZE + 1, None])
@pytest.mark.parametrize("source", ["folder", calibration.PHOTOS, "tfds:calibration_shapes"])
def test_calibration_size_refusals(image_folder, source, count):
    # Before the source is read (a TFDS dataset is not even looked up).
    with pytest.raises(ValueError, match="`calibration_size` must be an integer from 1 to"):
        calibration.calibration_pixels(image_folder if source == "folder" else source, size=24, count=count)


@pytest.mark.parametrize("source", [5, None, b"photos", ["photos"], {"tfds": "mnist"}, np.zeros((1, 8, 8, 3))])
def test_calibration_source_type_refusals(source):
    with pytest.raises(TypeError, match=r"the calibration source must be a folder of images, 'photos' .* got "):
        calibration.calibration_pixels(source, size=24)


def test_shipped_photos_are_package_data_and_calibrate(tmp_path, monkeypatch):
    photos = calibration.shipped_photos()
    assert [p.name for p in photos] == ["cat.jpg", "coffee.jpg", "rocket.jpg"]
    # setup.cfg ships them with the package (the wheel has no examples/ folder).
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    patterns = setup["options.package_data"]["keras_cvt"].split()
    for photo in photos:
        assert any(fnmatch.fnmatch(f"{calibration.PHOTOS_FOLDER}/{photo.name}", p) for p in patterns), patterns
    # examples/images is the same folder (the quickstart's photos).
    assert sorted(p.name for p in (ROOT / "examples" / "images").glob("*.jpg")) == [p.name for p in photos]
    transform = transforms.evaluation_transform(24, None)
    wanted = np.stack([transform(images.load_image(str(p))).numpy() for p in photos])
    np.testing.assert_array_equal(calibration.calibration_pixels("photos", 24, None, count=10), wanted)
    two = calibration.calibration_pixels("photos", 24, None, count=2)
    assert len(two) == 2 and all(any(np.array_equal(p, w) for w in wanted) for p in two)
    # A folder called photos here: the name is refused as ambiguous; ./photos is the folder.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos").mkdir()
    write_png(tmp_path / "photos" / "mine.png", 30, 30, np.full((30, 30, 3), 7, np.uint8))
    with pytest.raises(ValueError, match=r"names the photos shipped with keras_cvt, and there is also a folder 'photos' here: pass './photos'"):
        calibration.calibration_pixels("photos", 24)
    np.testing.assert_array_equal(calibration.calibration_pixels("./photos", 24), np.full((1, 24, 24, 3), 7, np.float32))


@pytest.fixture(scope="module")
def tfds_datasets():
    """`tensorflow_datasets` with four small datasets registered (by their builders' classes,
    prepared offline from arrays): `calibration_shapes` (RGB images of TFDS_SIZES), and three
    that calibration refuses: no image feature, 16-bit images, two image features."""
    import tensorflow_datasets as tfds

    class _Builder(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")
        FEATURES = {}

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(self.FEATURES))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            rng = np.random.default_rng(0)
            for i, (height, width) in enumerate(TFDS_SIZES):
                yield i, {"image": rng.integers(0, 256, (height, width, 3), np.uint8), "label": i % 2}

    class CalibrationShapes(_Builder):
        FEATURES = {"image": tfds.features.Image(shape=(None, None, 3)), "label": tfds.features.ClassLabel(num_classes=2)}

    class CalibrationTable(_Builder):
        FEATURES = {"value": tfds.features.Tensor(shape=(2,), dtype=np.float32), "label": tfds.features.ClassLabel(num_classes=2)}

    class CalibrationDepth(_Builder):
        FEATURES = {"depth": tfds.features.Image(shape=(None, None, 1), dtype=np.uint16)}

    class CalibrationStereo(_Builder):
        FEATURES = {"left": tfds.features.Image(shape=(None, None, 3)), "right": tfds.features.Image(shape=(None, None, 3))}

    return tfds


def _tfds_images(tfds, data_dir, split="train"):
    """The test dataset's images as TFDS decodes them, in the order it reads them."""
    dataset = tfds.builder("calibration_shapes", data_dir=data_dir).as_dataset(split=split, shuffle_files=False)
    return [example["image"] for example in tfds.as_numpy(dataset)]


def test_tfds_calibration_prepares_and_reads_a_split(tfds_datasets, tmp_path, monkeypatch):
    tfds = tfds_datasets
    builder = tfds.builder("calibration_shapes", data_dir=str(tmp_path))
    assert not builder.is_prepared()
    pixels = calibration.calibration_pixels("tfds:calibration_shapes", 24, 0.875, count=10, data_dir=str(tmp_path))
    assert tfds.builder("calibration_shapes", data_dir=str(tmp_path)).is_prepared()
    decoded = _tfds_images(tfds, str(tmp_path))
    assert sorted(image.shape[:2] for image in decoded) == sorted(TFDS_SIZES)
    transform = transforms.evaluation_transform(24, 0.875)
    np.testing.assert_array_equal(pixels, np.stack([transform(image).numpy() for image in decoded]))
    # The first `count`; a split that TFDS slices; TFDS_DATA_DIR where data_dir is not given.
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    np.testing.assert_array_equal(calibration.calibration_pixels("tfds:calibration_shapes", 24, 0.875, count=2), pixels[:2])
    sliced = calibration.calibration_pixels("tfds:calibration_shapes@train[2:]", 24, 0.875, count=10)
    np.testing.assert_array_equal(sliced, pixels[2:])


@pytest.mark.parametrize(
    "source, message",
    [
        ("tfds:", "the calibration source 'tfds:' must be 'tfds:NAME' or 'tfds:NAME@SPLIT'"),
        ("tfds:calibration_shapes@", "must be 'tfds:NAME' or 'tfds:NAME@SPLIT'"),
        ("tfds:no_such_dataset_xyz", "calibration source 'tfds:no_such_dataset_xyz': Dataset no_such_dataset_xyz not found."),
        ("tfds:" + "x" * 5000, "not found"),
        ("tfds:../../etc/passwd", "calibration source 'tfds:../../etc/passwd': "),
        ("tfds:calibration_shapes:9.9.9", "cannot be loaded at version 9.9.9, only: 1.0.0"),
        ("tfds:calibration_shapes/nocfg", "calibration source 'tfds:calibration_shapes/nocfg': "),
        ("tfds:calibration_shapes@validation", "Unknown split 'validation'. Should be one of ['train']"),
        ("tfds:calibration_shapes@train[:0]", "corresponds to no data"),
        ("tfds:calibration_shapes@train[9:]", "incompatible with 5 examples"),
        ("tfds:calibration_table", "no image feature (its features: label, value)"),
        ("tfds:calibration_depth", "its image feature 'depth' holds <class 'numpy.uint16'> images; calibration takes 8-bit"),
        ("tfds:calibration_stereo", "several image features (left, right), none called 'image'"),
    ],
    ids=["no name", "no split", "unknown", "too long", "a path", "unknown version", "unknown config", "unknown split", "empty slice", "past the end",
         "no image", "16-bit", "two images"],
)
def test_tfds_calibration_refusals(tfds_datasets, tmp_path, source, message):
    with pytest.raises(ValueError, match=_escaped(message)):
        calibration.calibration_pixels(source, 24, data_dir=str(tmp_path))
    # Nothing prepared (downloaded) for a dataset that is refused by its features.
    assert not (tmp_path / "calibration_table").exists() and not (tmp_path / "calibration_depth").exists()


def test_tfds_calibration_refuses_an_image_too_large_by_its_header(tfds_datasets, tmp_path, monkeypatch):
    monkeypatch.setattr(calibration, "MAX_CALIBRATION_PIXELS", 1500)  # 40 x 50 = 2000 pixels
    with pytest.raises(ValueError, match=r"calibration image 'tfds:calibration_shapes, example \d' is \d+ x \d+ pixels, more than 1,500"):
        calibration.calibration_pixels("tfds:calibration_shapes", 24, data_dir=str(tmp_path))


def test_tfds_calibration_without_tensorflow_datasets_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # what an absent package does
    with pytest.raises(ImportError, match=_escaped("(tfds:NAME) needs the tensorflow-datasets package: pip install keras-cvt[int8]")):
        calibration.calibration_pixels("tfds:calibration_shapes", 24)
