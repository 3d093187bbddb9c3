"""A TF Serving SavedModel that takes encoded images.

`export_for_serving` writes a SavedModel whose default signature takes what a client has (the
bytes of JPEG, PNG, GIF, BMP or WebP files) and does the evaluation transform of the weights in
the graph, so clients need neither Keras nor this package, nor a copy of the transform. The
SavedModel holds plain TensorFlow functions and variables: `tf.saved_model.load` and TF Serving
load it without Keras.

Signatures (inputs -> outputs):

- `serving_default`: `images` (`tf.string`, `[batch]`, encoded image files, of any sizes) ->
  `classes` (`int32`, `[batch, top_k]`), `labels` (`tf.string`, `[batch, top_k]`) and
  `scores` (`float32`, `[batch, top_k]`), best first.
- `predict_pixels`: `pixels` (`float32`, `[batch, height, width, 3]`, RGB in [0, 255], already
  resized as the client likes; any height and width when the model was built with
  `input_shape=(None, None, 3)`) -> `probabilities` (`float32`, `[batch, classes]`).
- `predict_pixels_uint8`: the same for `uint8` pixels. A signature has one dtype per input, and
  TF Serving cannot cast, so each dtype gets its own signature.

A bad element of `images` (an empty string, bytes that are no image, a corrupt, truncated or
zero-sized image) fails the whole request with an `InvalidArgumentError` that names it, such
as "`images`[2] could not be decoded: ..."; the decoder's own message goes to the server's
log. Too small `pixels` fail the same way. An empty batch gets empty outputs.

The work per request is bounded by `max_request_pixels`, fixed at export: the pixels the
headers of a request's images declare, plus those their resizes before the centre crop would
produce, added up in order; the image that takes the sum over the limit fails the request,
before any image is decoded. The work per image is bounded by `max_pixels`, fixed at export: an image whose header declares
more pixels (height x width) is refused before it is decoded, and one whose resize before the
centre crop would exceed it (a long thin image: the short side is scaled up to 256) is refused
before it is resized, each with an `InvalidArgumentError` naming it. 8-bit (palette) BMPs are
decoded in their colours; BMPs that TensorFlow's decoder would misread (run-length compressed,
1, 4 or 16 bits per pixel, OS/2 headers, unusual colour masks) are refused by name.
"""

import os

import keras
import tensorflow as tf

from keras_cvt import atomic, transforms
from keras_cvt.export.classifier import Classifier, label_strings
from keras_cvt.images import decode_image, inspect_encoded_image
from keras_cvt.pretrained import DEFAULT_TRANSFORM

IMAGES_SIGNATURE = "serving_default"
PIXELS_SIGNATURE = "predict_pixels"
PIXELS_UINT8_SIGNATURE = "predict_pixels_uint8"
# Photos of today's 48 and 50 megapixel phone sensors and 45 megapixel cameras pass. Decoding
# and transforming an image peaks at 30 to 40 bytes per pixel (measured: 1.4 GB for a 49
# megapixel PNG, 3.7 GB for an 89 megapixel one, PIL's decompression-bomb threshold), so this
# bounds one image to about 2 GB.
DEFAULT_MAX_PIXELS = 50_000_000
# Two images of the largest size, or eight 12-megapixel photos, or about 1,500 small images
# (each is resized to at least 256 x 256): a request then peaks at about 4 GB however many cores
# decode it in parallel, where per-image limits alone let the peak grow with the cores.
DEFAULT_MAX_REQUEST_PIXELS = 2 * DEFAULT_MAX_PIXELS
# The status of a refused image (0: transformed), and what the request's error says of it.
_TOO_MANY_PIXELS, _RESIZE_TOO_LARGE, _UNREADABLE_BMP = 1, 2, 3
_REFUSALS = {
    _TOO_MANY_PIXELS: "`images`[{}] is {} x {} = {} pixels (height x width), more than the limit of {} "
    "pixels this model was exported with (max_pixels)",
    _RESIZE_TOO_LARGE: "`images`[{}] ({} x {} pixels, height x width) would be resized to {} x {} = {} "
    "pixels before its centre crop, more than the limit of {} pixels this model was exported with "
    "(max_pixels): its aspect ratio is too extreme",
    _UNREADABLE_BMP: "`images`[{}] is a BMP of a kind the decoder cannot read or would misread "
    "(compressed, 1, 4 or 16 bits per pixel, an OS/2 header, or colour masks other than BGRA): send "
    "it as PNG",
}


def export_for_serving(
    model,
    path,
    *,
    image_size=DEFAULT_TRANSFORM.size,
    crop_ratio=DEFAULT_TRANSFORM.crop_ratio,
    top_k=5,
    labels=None,
    max_pixels=DEFAULT_MAX_PIXELS,
    max_request_pixels=DEFAULT_MAX_REQUEST_PIXELS,
    overwrite=False,
):
    """Writes `model` as a SavedModel for TF Serving that classifies encoded images.

    Args:
        model: a CvT classifier (`include_top=True`); build it with `input_shape=(None, None, 3)`
            so that `predict_pixels` takes any height and width. Models built with
            `include_preprocessing=False` get the ImageNet normalisation in the signatures, and
            a classifier without activation (`classifier_activation=None`) gets a softmax, so
            every signature takes pixels in [0, 255] and returns probabilities.
        path: the directory to write, for TF Serving a numbered version directory such as
            `models/cvt13/1`. The SavedModel is written to a hidden directory beside it and
            renamed into place when complete, so a server polling `models/cvt13` never sees
            half a model.
        image_size: the height and width the images are transformed to (the weights'
            resolution, see `keras_cvt.pretrained`).
        crop_ratio: the evaluation crop: the short side is resized to
            `int(image_size / crop_ratio)` and the centre cropped, or `None` to resize straight
            to `image_size` (the 384 checkpoints). See `keras_cvt.transforms`.
        top_k: how many classes `serving_default` returns per image.
        labels: the strings of the `labels` output: `None` for the ImageNet class names when the
            classifier has 1000 classes and the class indices as strings otherwise, `"imagenet"`
            for the ImageNet names (requires 1000 classes), or a list of one string per class.
        max_pixels: the most pixels (height x width) `serving_default` decodes per image, and the
            most its resize before the centre crop may produce; an image over it fails the
            request naming it. Decoding and transforming an image peaks at 30 to 40 bytes per
            pixel, so the default (50,000,000) bounds an image to about 2 GB; the images of a
            request are decoded in parallel (up to one per CPU core).
        max_request_pixels: the most pixels a request may bring: for each image, those its
            header declares plus those its resize before the centre crop produces, summed over
            the request. Checked from the headers before any image is decoded; the image that
            takes the sum over it fails the request, naming it. The default (100,000,000)
            bounds a request to about 4 GB.
        overwrite: whether to replace an existing non-empty directory at `path`.

    Returns:
        The absolute path written.
    """
    # Entering it checks `path` (before the minutes that tracing a large model can take), and
    # whatever fails inside leaves nothing behind.
    with atomic.publish_directory(path, overwrite) as staging:
        _export_for_serving(model, staging, image_size, crop_ratio, top_k, labels, max_pixels, max_request_pixels)
    return os.path.abspath(os.fspath(path))


def _export_for_serving(model, directory, image_size, crop_ratio, top_k, labels, max_pixels, max_request_pixels):
    classifier = Classifier(model)
    if not isinstance(top_k, int) or not 1 <= top_k <= classifier.classes:
        raise ValueError(
            f"`top_k` must be an integer in [1, {classifier.classes}] (the model's classes), got top_k={top_k!r}"
        )
    strings = label_strings(labels, classifier.classes)
    transform = transforms.evaluation_transform(image_size, crop_ratio)
    for axis, size in zip(("height", "width"), classifier.input_size):
        if size is not None and size != image_size:
            raise ValueError(
                f"`image_size`={image_size} does not fit the model's input {axis} {size}; build the "
                "model with input_shape=(None, None, 3)"
            )
    if image_size < classifier.min_size:
        raise ValueError(f"`image_size` must be at least {classifier.min_size} for this model, got {image_size}")
    square = image_size if crop_ratio is None else int(image_size / crop_ratio)
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < square**2:
        raise ValueError(
            f"`max_pixels` must be an integer of at least {square**2} (the {square} x {square} that a "
            f"square image is resized to), got max_pixels={max_pixels!r}"
        )
    # One square image brings its own pixels and those of its resize.
    least = 2 * square**2
    if isinstance(max_request_pixels, bool) or not isinstance(max_request_pixels, int) or max_request_pixels < least:
        raise ValueError(
            f"`max_request_pixels` must be an integer of at least {least} (a {square} x {square} image and its "
            f"resize), got max_request_pixels={max_request_pixels!r}"
        )

    height, width = classifier.input_size
    # One trace of the network that every signature calls: the SavedModel then holds it once,
    # not once per signature, and exports trace it once.
    predict = tf.function(
        classifier, input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32)], autograph=False
    )

    def serve_images(images):
        pixels = _decode_and_transform(images, transform, image_size, crop_ratio, max_pixels, max_request_pixels)
        scores, classes = tf.math.top_k(predict(pixels), k=top_k)
        return {
            "classes": tf.cast(classes, tf.int32),
            "labels": tf.gather(tf.constant(strings), classes),
            "scores": scores,
        }

    def serve_pixels(pixels):
        return {"probabilities": predict(tf.cast(_check_pixels(pixels, classifier.min_size), tf.float32))}

    # No archive.track(model): the archive saves the variables the signatures use anyway, and
    # tracking the model saves every weight a second time (through Keras' variable wrappers),
    # doubling the SavedModel.
    archive = keras.export.ExportArchive()
    archive.add_endpoint(
        IMAGES_SIGNATURE, serve_images, input_signature=[tf.TensorSpec([None], tf.string, name="images")]
    )
    for name, dtype in ((PIXELS_SIGNATURE, tf.float32), (PIXELS_UINT8_SIGNATURE, tf.uint8)):
        archive.add_endpoint(
            name, serve_pixels, input_signature=[tf.TensorSpec([None, height, width, 3], dtype, name="pixels")]
        )
    archive.write_out(directory, verbose=False)


def _first(mask):
    """Index of the first True of a boolean vector, or its length when there is none."""
    return tf.argmax(tf.concat([mask, [True]], axis=0), output_type=tf.int32)


def _check_request(indices, images, image_size, crop_ratio, max_pixels, max_request_pixels):
    """An Assert that the request's images stay within `max_request_pixels`, read from their headers.

    Images that their own checks will refuse (over `max_pixels`, or no size in the header)
    count for nothing here, so that they get their own message; so do those whose header
    cannot be read (the decoding step names them).
    """

    def cost(index, encoded):
        height_width, _ = inspect_encoded_image(encoded)
        declared = tf.reduce_prod(height_width)
        produced = tf.reduce_prod(transforms.evaluation_resize_size(height_width, image_size, crop_ratio))
        counted = (declared > 0) & (declared <= max_pixels) & (produced <= max_pixels)
        return index, tf.where(counted, declared + produced, tf.constant(0, tf.int64))

    count = tf.shape(images)[0]
    costs = (
        tf.data.Dataset.from_tensor_slices((indices, images))
        .map(cost)
        .ignore_errors()
        .concatenate(tf.data.Dataset.from_tensors((tf.constant(-1), tf.constant(0, tf.int64))))
    )
    counted_indices, counted = costs.batch(tf.cast(count, tf.int64) + 1).get_single_element()
    per_image = tf.scatter_nd(counted_indices[:-1, None], counted[:-1], [count])
    # The sentinel keeps `total` non-empty for an empty request.
    total = tf.concat([tf.cumsum(per_image), [0]], axis=0)
    over = total[:-1] > max_request_pixels
    first = _first(over)
    return tf.debugging.Assert(
        tf.logical_not(tf.reduce_any(over)),
        [
            tf.strings.format(
                "`images`[{}] brings the request to {} pixels (the pixels of each image and of its resize, "
                "summed over `images`[0] to `images`[{}]), more than the limit of {} pixels per request this "
                "model was exported with (max_request_pixels): send fewer or smaller images per request",
                (first, total[first], first, max_request_pixels),
            )
        ],
    )


def _decode_and_transform(images, transform, image_size, crop_ratio, max_pixels, max_request_pixels):
    """Encoded images `[batch]` -> transformed pixels `[batch, size, size, 3]`, or a clean error.

    A bad element fails the whole request with an InvalidArgumentError that names it: dropping
    it would shift every later result onto the wrong image. The request's size is checked
    first (`_check_request`), before any image is decoded.
    """
    empty = tf.equal(tf.strings.length(images), 0)
    check_empty = tf.debugging.Assert(
        tf.logical_not(tf.reduce_any(empty)),
        [tf.strings.format("`images`[{}] is an empty string, not an encoded image", _first(empty))],
    )
    with tf.control_dependencies([check_empty]):
        count = tf.shape(images)[0]
        indices = tf.range(count)
    check_request = _check_request(indices, images, image_size, crop_ratio, max_pixels, max_request_pixels)
    with tf.control_dependencies([check_request]):
        indices = tf.identity(indices)
    no_pixels = tf.zeros([image_size, image_size, 3])

    def refusal(height_width):
        """(status, [height, width, resized height, resized width]) of an image of that size."""
        resized = transforms.evaluation_resize_size(height_width, image_size, crop_ratio)
        status = tf.where(
            tf.reduce_prod(height_width) > max_pixels,
            _TOO_MANY_PIXELS,
            tf.where(tf.reduce_prod(resized) > max_pixels, _RESIZE_TOO_LARGE, 0),
        )
        return status, tf.concat([height_width, resized], axis=0)

    def decode(index, encoded):
        height_width, decodable = inspect_encoded_image(encoded)
        status, sizes = refusal(height_width)
        status = tf.where(decodable, status, _UNREADABLE_BMP)

        def decode_and_check():
            image = decode_image(encoded)
            check_size = tf.debugging.assert_positive(tf.shape(image)[:2], message="zero-sized image")
            with tf.control_dependencies([check_size]):
                # A header we do not read (or one that lies) is caught here, still before the
                # float conversion and the resize, the steps that take memory.
                status, sizes = refusal(tf.cast(tf.shape(image)[:2], tf.int64))
            return tf.cond(
                tf.equal(status, 0),
                lambda: (status, sizes, transform(image)),
                lambda: (status, sizes, no_pixels),
            )

        status, sizes, pixels = tf.cond(tf.equal(status, 0), decode_and_check, lambda: (status, sizes, no_pixels))
        return index, status, sizes, pixels

    # Graph functions cannot catch a decoder's error, so which image failed would be lost: a
    # tf.data pipeline can skip failed elements (logging the decoder's message), and the
    # indices that come through tell which one it was.
    decoded = (
        tf.data.Dataset.from_tensor_slices((indices, images))
        .map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .ignore_errors(log_warning=True)
    )
    # The sentinel keeps the one batch non-empty when nothing (or no image) came through.
    sentinel = tf.data.Dataset.from_tensors((tf.constant(-1), tf.constant(0), tf.zeros([4], tf.int64), no_pixels))
    decoded_indices, statuses, sizes, pixels = (
        decoded.concatenate(sentinel).batch(tf.cast(count, tf.int64) + 1).get_single_element()
    )
    succeeded = tf.scatter_nd(decoded_indices[:-1, None], tf.ones_like(decoded_indices[:-1]), [count]) > 0
    check_decoded = tf.debugging.Assert(
        tf.reduce_all(succeeded),
        [
            tf.strings.format(
                "`images`[{}] could not be decoded: not a JPEG, PNG, GIF, BMP or WebP image, or a "
                "corrupt, truncated or zero-sized one",
                _first(tf.logical_not(succeeded)),
            )
        ],
    )
    checks = [check_decoded]
    for status, message in _REFUSALS.items():
        refused = tf.equal(statuses[:-1], status)
        # The sentinel's row when nothing is refused: an Assert computes its message either way.
        first = _first(refused)
        height, width, resized_height, resized_width = tf.unstack(sizes[first])
        if status == _TOO_MANY_PIXELS:
            fields = (height, width, height * width, max_pixels)
        elif status == _RESIZE_TOO_LARGE:
            fields = (height, width, resized_height, resized_width, resized_height * resized_width, max_pixels)
        else:
            fields = ()
        # After the decoding check: an image that failed to decode shifts the ones behind it.
        with tf.control_dependencies([check_decoded]):
            checks.append(
                tf.debugging.Assert(
                    tf.logical_not(tf.reduce_any(refused)),
                    [tf.strings.format(message, (decoded_indices[first],) + fields)],
                )
            )
    with tf.control_dependencies(checks):
        return tf.identity(pixels[:-1])


def _check_pixels(pixels, min_size):
    shape = tf.shape(pixels)
    check = tf.debugging.Assert(
        tf.reduce_all(shape[1:3] >= min_size),
        [tf.strings.format("`pixels` height and width must be at least {}, got {}", (min_size, shape[1:3]))],
    )
    with tf.control_dependencies([check]):
        return tf.identity(pixels)
