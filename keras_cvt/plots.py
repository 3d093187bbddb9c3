"""Pictures of what a model saw and learned, as PNG files (the `plots` extra: matplotlib).

Every figure has a fixed size in pixels (`size`, width and height; no tight bounding box), so
the files are what the caller asked for, and is written atomically. matplotlib runs with its
non-interactive Agg canvas: nothing opens a window or needs a display.
"""

import io

import numpy as np

from keras_cvt import atomic

DPI = 100
HEAT_ALPHA = 0.5


def _figure(size):
    from matplotlib.figure import Figure

    width, height = size
    if width < 64 or height < 64 or width > 8000 or height > 8000:
        raise ValueError(f"`size` must be (width, height) in pixels, each in [64, 8000], got {size!r}")
    return Figure(figsize=(width / DPI, height / DPI), dpi=DPI)


def save(figure, path):
    """Writes `figure` as a PNG file at `path` (atomically); returns the path."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    atomic.write_bytes(path, buffer.getvalue())
    return path


def _show_overlay(axes, image, heat, title, marked=False):
    axes.imshow(np.clip(np.asarray(image), 0, 255).astype(np.uint8), interpolation="nearest")
    if heat is not None:
        axes.imshow(heat, cmap="jet", alpha=HEAT_ALPHA, vmin=0.0, vmax=1.0, interpolation="bilinear")
    axes.set_title(title, fontsize=8, loc="left", color="red" if marked else "black")
    axes.set_xticks([])
    axes.set_yticks([])
    for spine in axes.spines.values():
        spine.set_visible(marked)
        spine.set_color("red")
        spine.set_linewidth(3)


def overlay(image, heat, title, size=(480, 560)):
    """A heat map (`(height, width)` in [0, 1], or None) over an RGB `image` (0-255), with a
    title (several lines allowed)."""
    figure = _figure(size)
    _show_overlay(figure.add_axes((0.02, 0.02, 0.96, 0.72)), image, heat, title)
    return figure


def overlay_grid(images, heats, titles, columns=4, cell=(300, 340), marked=None):
    """`overlay`s of several images in one figure, `columns` wide; `marked` (one bool per
    image) frames an image and its title in red."""
    count = len(images)
    columns = max(1, min(columns, count))
    rows = -(-count // columns)
    figure = _figure((cell[0] * columns, cell[1] * rows))
    for index in range(count):
        axes = figure.add_subplot(rows, columns, index + 1)
        heat = None if heats is None else heats[index]
        _show_overlay(axes, images[index], heat, titles[index], bool(marked is not None and marked[index]))
    figure.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.9, hspace=0.6, wspace=0.1)
    return figure


def training_curves(history, accuracy="top1", size=(900, 360)):
    """Loss and accuracy per epoch, training and held out, from a Keras `History.history`:
    keys `loss`, `val_loss`, `accuracy` (the metric's name) and `val_` + `accuracy`."""
    from matplotlib.ticker import MaxNLocator

    figure = _figure(size)
    panels = [("loss", "loss")] + ([(accuracy, f"{accuracy} accuracy")] if accuracy in history else [])
    for index, (key, label) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), index + 1)
        for name, style in ((key, "-o"), (f"val_{key}", "--s")):
            if name in history:
                values = history[name]
                legend = "training" if name == key else "held out"
                axes.plot(range(1, len(values) + 1), values, style, markersize=3, label=legend)
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_title(label, fontsize=10)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    figure.subplots_adjust(left=0.07, right=0.98, bottom=0.15, top=0.88, wspace=0.25)
    return figure


def confusion_matrix(true, predicted, labels, size=(480, 440)):
    """The counts of each (true, predicted) class pair, as a matrix with its numbers."""
    count = len(labels)
    matrix = np.zeros((count, count), dtype=np.int64)
    np.add.at(matrix, (np.asarray(true), np.asarray(predicted)), 1)
    figure = _figure(size)
    axes = figure.add_subplot(1, 1, 1)
    axes.imshow(matrix, cmap="Blues")
    for (row, col), value in np.ndenumerate(matrix):
        if value:
            color = "white" if value > matrix.max() / 2 else "black"
            axes.text(col, row, str(value), ha="center", va="center", fontsize=7, color=color)
    axes.set_xticks(range(count), labels, fontsize=8)
    axes.set_yticks(range(count), labels, fontsize=8)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(f"{int(np.trace(matrix))} of {int(matrix.sum())} right", fontsize=10)
    figure.subplots_adjust(left=0.12, right=0.98, bottom=0.12, top=0.92)
    return figure, matrix
