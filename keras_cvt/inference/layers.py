"""The folded layers of the inference form (being split out of `keras_cvt.layers`)."""

from keras_cvt.layers import HeadProjection  # noqa: F401
