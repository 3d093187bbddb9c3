"""Reading encoded images in TensorFlow: their size from the header, without decoding them (so
a server can refuse one before allocating it), and decoding them as RGB."""

import tensorflow as tf


# Enough for every field read below: the BMP colour masks end at byte 66.
_HEADER_LENGTH = 72
_PNG = b"\x89PNG\r\n\x1a\n"
# The BITFIELDS masks (red, green, blue) of the BGRA layout TensorFlow's BMP decoder assumes.
_BMP_BGRA_MASKS = (0x00FF0000, 0x0000FF00, 0x000000FF)


def _header(encoded):
    # Zero padding: a file shorter than the header reads as zeros here, and the decoder, not
    # this parser, reports it as truncated.
    padded = tf.strings.join([encoded, tf.constant(b"\0" * _HEADER_LENGTH)])
    return tf.cast(tf.io.decode_raw(tf.strings.substr(padded, 0, _HEADER_LENGTH), tf.uint8), tf.int64)


def _integer(header, start, length, big_endian=False):
    shifts = tf.range(length, dtype=tf.int64) * 8
    if big_endian:
        shifts = tf.reverse(shifts, [0])
    return tf.reduce_sum(tf.bitwise.left_shift(header[start : start + length], shifts))


def _signed(value):
    """A 32-bit two's complement integer (read unsigned) as signed."""
    return tf.where(value >= 1 << 31, value - (1 << 32), value)


def _has(header, start, magic):
    return tf.reduce_all(tf.equal(header[start : start + len(magic)], tf.constant(list(magic), tf.int64)))


def _is_bmp(header):
    return _has(header, 0, b"BM")


def _bmp_bits(header):
    return _integer(header, 28, 2)


def _bmp_decodable(header):
    """False for the BMPs TensorFlow's decoder cannot read or would misread without an error."""
    info_size, bits, compression = _integer(header, 14, 4), _bmp_bits(header), _integer(header, 30, 4)
    masks = tf.stack([_integer(header, start, 4) for start in (54, 58, 62)])
    plain = tf.equal(compression, 0) & tf.reduce_any(tf.equal(bits, [8, 24, 32]))
    bgra = tf.equal(compression, 3) & tf.equal(bits, 32) & tf.reduce_all(tf.equal(masks, _BMP_BGRA_MASKS))
    return tf.logical_not(_is_bmp(header)) | ((info_size >= 40) & (plain | bgra))


def inspect_encoded_image(encoded):
    """Reads an encoded image's header, without decoding it: `(height_width, decodable)`.

    `height_width` (int64 `[2]`) is the size the JPEG, PNG, GIF, BMP or WebP header declares,
    which is what the decoder allocates, so a server can refuse an image before decoding it;
    `[0, 0]` for anything else, which the decoder refuses. `decodable` (bool) is False for the
    BMP variants that TensorFlow's decoder cannot read (1, 4 or 16 bits per pixel) or would
    misread without an error (compressed, OS/2 headers, colour masks other than BGRA); True
    does not promise the decoder succeeds.
    A JPEG whose header is corrupt raises InvalidArgumentError.
    """
    header = _header(encoded)
    is_webp = _has(header, 0, b"RIFF") & _has(header, 8, b"WEBP")
    vp8l = _integer(header, 21, 4)

    def sizes(height, width):
        return lambda: tf.stack([height, width])

    height_width = tf.case(
        [
            (_has(header, 0, _PNG), sizes(_integer(header, 20, 4, True), _integer(header, 16, 4, True))),
            (_has(header, 0, b"GIF8"), sizes(_integer(header, 8, 2), _integer(header, 6, 2))),
            # A negative height means rows stored top-down.
            (_is_bmp(header), sizes(tf.abs(_signed(_integer(header, 22, 4))), _integer(header, 18, 4))),
            (
                is_webp & _has(header, 12, b"VP8 "),
                sizes(_integer(header, 28, 2) & 0x3FFF, _integer(header, 26, 2) & 0x3FFF),
            ),
            (
                is_webp & _has(header, 12, b"VP8L"),
                sizes((tf.bitwise.right_shift(vp8l, 14) & 0x3FFF) + 1, (vp8l & 0x3FFF) + 1),
            ),
            (
                is_webp & _has(header, 12, b"VP8X"),
                sizes(_integer(header, 27, 3) + 1, _integer(header, 24, 3) + 1),
            ),
            (
                _has(header, 0, b"\xff\xd8\xff"),
                lambda: tf.cast(tf.io.extract_jpeg_shape(encoded)[:2], tf.int64),
            ),
        ],
        default=lambda: tf.zeros([2], tf.int64),
    )
    return height_width, _bmp_decodable(header)


def _decode_palette_bmp(encoded, header):
    # TensorFlow's decoder returns an 8-bit BMP's colour indices as grey levels; the colour
    # table (blue, green, red, reserved per entry) follows the info header.
    info_size = _integer(header, 14, 4)
    used = _integer(header, 46, 4)
    colours = tf.where((used == 0) | (used > 256), tf.constant(256, tf.int64), used)
    table = tf.io.decode_raw(tf.strings.substr(encoded, 14 + info_size, 4 * colours), tf.uint8)
    palette = tf.reverse(tf.reshape(table, [-1, 4])[:, :3], [1])
    # An index past the table fails tf.gather: the file is corrupt.
    return tf.gather(palette, tf.cast(tf.io.decode_bmp(encoded, channels=0)[..., 0], tf.int32))


def decode_image(encoded):
    """Decodes JPEG, PNG, BMP, GIF (its first frame) or WebP bytes as an RGB uint8 image.

    8-bit (palette) BMPs come out in their colours; BMPs that TensorFlow would misread
    (see `inspect_encoded_image`) raise InvalidArgumentError.
    """
    header = _header(encoded)
    check = tf.debugging.Assert(
        _bmp_decodable(header),
        [
            "unsupported BMP: compressed, 1, 4 or 16 bits per pixel, an OS/2 header, or colour masks "
            "other than BGRA"
        ],
    )
    with tf.control_dependencies([check]):
        return tf.cond(
            _is_bmp(header) & tf.equal(_bmp_bits(header), 8),
            lambda: _decode_palette_bmp(encoded, header),
            lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False),
        )


def load_image(path):
    """Reads and decodes an image file (JPEG, PNG, BMP, GIF's first frame, WebP) as RGB uint8."""
    return decode_image(tf.io.read_file(path))
