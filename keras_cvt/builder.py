"""The generic CvT builder: any widths, depths and heads, with the `keras.applications`
signature.

Reference: [CvT: Introducing Convolutions to Vision Transformers](https://arxiv.org/abs/2103.15808)
(Wu et al., ICCV 2021), ported from the original microsoft/CvT `cls_cvt.py`. The published
variants (`keras_cvt.CvT13`, ...) and their pretrained weights are in `keras_cvt.variants`.
"""

import warnings

import keras
from keras import layers

from keras_cvt import arguments, weights_file
from keras_cvt.architectures import DEFAULT_SIZE, PATCH_PADDINGS, PATCH_SIZES, PATCH_STRIDES
from keras_cvt.layers import (
    ATTENTION_KERNEL_SIZE,
    ATTENTION_PADDING,
    KV_STRIDE,
    Q_STRIDE,
    QKV_BIAS,
    ClassToken,
    ConvEmbedding,
    CvTBlock,
    LayerNorm,
    conv_output_size,
)
from keras_cvt.pretrained import IMAGENET_MEAN, IMAGENET_STD


def CvT(
    depths,
    embed_dims,
    num_heads,
    mlp_ratio=4.0,
    patch_sizes=PATCH_SIZES,
    patch_strides=PATCH_STRIDES,
    patch_paddings=PATCH_PADDINGS,
    attention_kernel_size=ATTENTION_KERNEL_SIZE,
    q_stride=Q_STRIDE,
    kv_stride=KV_STRIDE,
    attention_padding=ATTENTION_PADDING,
    qkv_bias=QKV_BIAS,
    drop_path_rate=0.0,
    include_top=True,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=arguments.DEFAULT_CLASSES,
    classifier_activation="softmax",
    include_preprocessing=True,
    default_size=DEFAULT_SIZE,
    name="cvt",
):
    """Instantiates a CvT of any widths, depths and heads.

    The published variants are `CvT13`, `CvT21` and `CvTW24`; this builder serves research
    variants without a copy of the code. Stages are built alike: a convolutional token
    embedding, then transformer blocks with convolutional projection attention; the last stage
    carries the class token.

    Args:
        depths: blocks per stage.
        embed_dims: token width per stage.
        num_heads: attention heads per stage (each must divide the stage's width).
        mlp_ratio: MLP hidden width relative to the token width.
        patch_sizes, patch_strides, patch_paddings: kernel, stride and symmetric padding of
            each stage's convolutional token embedding.
        attention_kernel_size, q_stride, kv_stride, attention_padding, qkv_bias: the
            convolutional projections of every attention (the original's KERNEL_QKV,
            STRIDE_Q, STRIDE_KV, PADDING_Q and PADDING_KV, QKV_BIAS): the depthwise kernel size,
            the query and key/value strides, the symmetric zero padding, and whether the q/k/v
            Linear layers have a bias. The queries keep the map's size (each block adds the
            attention's output to its input), so `q_stride` must be 1 and `attention_padding`
            `(attention_kernel_size - 1) / 2`; a larger `kv_stride` shrinks the attention matrix.
            The published variants use the defaults.
        drop_path_rate: stochastic depth rate of the last block, rising linearly from 0 over
            the last stage's blocks (the other stages use none, as in the original).
        default_size: input height and width when `include_top=True` and no `input_shape`.
        include_top, weights, input_tensor, input_shape, pooling, classes,
        classifier_activation, include_preprocessing, name: as in `CvT13`, except that
            `weights` takes no pretrained names (they belong to the variant builders). Left
            at its default, `classes` is that of the classifier in `weights` (1000 without).

    Returns:
        A `keras.Model`.
    """
    depths, embed_dims, num_heads, patch_sizes, patch_strides, patch_paddings = arguments.check_stages(
        depths, embed_dims, num_heads, patch_sizes, patch_strides, patch_paddings
    )
    mlp_ratio = arguments.check_mlp_ratio(mlp_ratio, embed_dims)
    attention_kernel_size, q_stride, kv_stride, attention_padding, qkv_bias = arguments.check_attention(
        attention_kernel_size, q_stride, kv_stride, attention_padding, qkv_bias
    )
    default_size = arguments.check_integer("default_size", default_size, 1)
    arguments.check_arguments(
        include_top, include_preprocessing, input_tensor, input_shape, pooling, classes,
        classifier_activation, drop_path_rate, name,
    )
    include_top, include_preprocessing = bool(include_top), bool(include_preprocessing)
    weights_path = weights_file.resolve_path(weights)
    if weights_path is not None and include_top:
        classes = weights_file.check_classes(weights_path, classes)
    classes, drop_path_rate = int(classes), float(drop_path_rate)

    inputs, x = _image_input(input_tensor, input_shape, include_top, default_size)
    include_preprocessing = _check_input(
        x.shape, include_preprocessing, patch_sizes, patch_strides, patch_paddings
    )
    if include_preprocessing:
        x = layers.Normalization(
            mean=[255.0 * m for m in IMAGENET_MEAN],
            variance=[(255.0 * s) ** 2 for s in IMAGENET_STD],
            name="preprocessing",
        )(x)

    last = len(depths) - 1
    for i in range(len(depths)):
        x = ConvEmbedding(
            embed_dims[i], patch_sizes[i], patch_strides[i], patch_paddings[i], name=f"stage{i}_embedding"
        )(x)
        if i == last:
            x = [x, ClassToken(embed_dims[i], name=f"stage{i}_cls_token")(x)]
        for j in range(depths[i]):
            rate = drop_path_rate * j / (depths[i] - 1) if i == last and depths[i] > 1 else 0.0
            x = CvTBlock(
                embed_dims[i],
                num_heads[i],
                mlp_ratio=mlp_ratio,
                drop_path_rate=rate,
                with_cls_token=i == last,
                attention_kernel_size=attention_kernel_size,
                q_stride=q_stride,
                kv_stride=kv_stride,
                attention_padding=attention_padding,
                qkv_bias=qkv_bias,
                name=f"stage{i}_block{j}",
            )(x)
        if i == last:
            x, cls_token = x
        x = layers.Identity(name=f"stage{i}_output")(x)

    if include_top or pooling == "token":
        cls_token = layers.Reshape((embed_dims[last],), name="cls_token_flatten")(cls_token)
        cls_token = LayerNorm(name="head_norm")(cls_token)
    if include_top:
        x = layers.Dense(
            classes,
            activation=classifier_activation,
            kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            dtype="float32",
            name="predictions",
        )(cls_token)
    elif pooling == "token":
        x = cls_token
    elif pooling == "avg":
        # The maps are NHWC whatever keras.config.image_data_format() says.
        x = layers.GlobalAveragePooling2D(data_format="channels_last", name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(data_format="channels_last", name="max_pool")(x)

    model = keras.Model(inputs, x, name=name)
    if weights_path is not None:
        weights_file.load(model, weights_path)
    return model


def _image_input(input_tensor, input_shape, include_top, default_size):
    """Returns (model inputs, image tensor) following keras.applications' conventions."""
    if input_tensor is not None:
        sources = keras.utils.get_source_inputs(input_tensor)
        return (sources[0] if len(sources) == 1 else sources), input_tensor
    if input_shape is None:
        input_shape = (default_size, default_size, 3) if include_top else (None, None, 3)
    image = keras.Input(shape=tuple(input_shape), name="images")
    return image, image


def _check_input(shape, include_preprocessing, patch_sizes, patch_strides, patch_paddings):
    """Rejects sizes the model cannot take, before any layer is built; returns whether the
    model normalises its input (only RGB input can be)."""
    channels = shape[-1]
    if include_preprocessing and channels != 3:
        # keras.applications' models (ConvNeXt, EfficientNetV2) leave out their built-in
        # normalisation for a channel count it does not fit, and build.
        warnings.warn(
            "`include_preprocessing=True` normalises RGB images with the ImageNet mean and "
            f"standard deviation, but the input has {channels} channels: the model takes it as "
            "it is. Pass include_preprocessing=False to say so.",
            stacklevel=3,
        )
        include_preprocessing = False
    for axis, axis_name in ((1, "height"), (2, "width")):
        size = shape[axis]
        for kernel, stride, padding in zip(patch_sizes, patch_strides, patch_paddings):
            size = conv_output_size(size, kernel, stride, padding)
            if size is not None and size < 1:
                raise ValueError(
                    f"`input_shape` {axis_name} {shape[axis]} is too small: the token "
                    f"embeddings (kernels {tuple(patch_sizes)}, strides {tuple(patch_strides)}) "
                    "leave no tokens"
                )
    return include_preprocessing
