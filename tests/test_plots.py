"""keras_cvt.plots: PNG files of the promised size, decodable, written atomically."""

import numpy as np
import pytest

pytest.importorskip("matplotlib")


def decoded(path):
    from keras_cvt import images

    return images.load_image(str(path)).numpy()


def test_figures_are_pngs_of_their_size(tmp_path):
    from keras_cvt import plots

    rng = np.random.RandomState(0)
    image = rng.randint(0, 256, (40, 56, 3))
    heat = rng.uniform(size=(40, 56))
    written = {
        "overlay.png": (plots.overlay(image, heat, "cat\n 90.0%  tabby"), (560, 480)),
        "plain.png": (plots.overlay(image, None, "no heat", size=(200, 120)), (120, 200)),
        "grid.png": (plots.overlay_grid([image] * 5, [heat] * 5, list("abcde"), columns=3, marked=[0, 1, 0, 0, 1]), (680, 900)),
        "curves.png": (
            plots.training_curves({"loss": [2, 1, 0.5], "val_loss": [2.1, 1.2, 0.7], "top1": [0.2, 0.6, 0.9],
                                   "val_top1": [0.2, 0.5, 0.8]}),
            (360, 900),
        ),
    }
    figure, matrix = plots.confusion_matrix([0, 1, 1, 2], [0, 1, 2, 2], ["a", "b", "c"])
    written["confusion.png"] = (figure, (440, 480))
    np.testing.assert_array_equal(matrix, [[1, 0, 0], [0, 1, 1], [0, 0, 1]])
    for name, (figure, (height, width)) in written.items():
        path = plots.save(figure, tmp_path / name)
        pixels = decoded(path)
        assert pixels.shape == (height, width, 3), name
        assert pixels.std() > 0, name  # something was drawn
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(written)  # no temporary files left


def test_the_heat_map_is_drawn_over_the_image(tmp_path):
    from keras_cvt import plots

    image = np.zeros((64, 64, 3))
    heat = np.zeros((64, 64))
    heat[:32] = 1.0  # hot top half (jet: red), cold bottom half (jet: blue)
    pixels = decoded(plots.save(plots.overlay(image, heat, "", size=(400, 400)), tmp_path / "o.png")).astype(int)
    middle = pixels[100:380, 40:360]
    top, bottom = middle[: len(middle) // 2 - 20], middle[len(middle) // 2 + 20 :]
    assert top[..., 0].mean() > top[..., 2].mean() + 40
    assert bottom[..., 2].mean() > bottom[..., 0].mean() + 40


@pytest.mark.parametrize("size", [(10, 480), (480, 9000), (0, 0)])
def test_silly_sizes_are_refused(size):
    from keras_cvt import plots

    with pytest.raises(ValueError, match="`size` must be \\(width, height\\) in pixels"):
        plots.overlay(np.zeros((8, 8, 3)), None, "", size=size)
