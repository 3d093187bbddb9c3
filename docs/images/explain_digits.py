"""Makes docs/images/explain_digits.png: Grad-CAM, rollout and the class token's attention of
the tiny CvT that tests/test_explain.py trains on pasted digits, and prints how often each
map's peak falls in the digit's box.

    PYTHONPATH=. python docs/images/explain_digits.py
"""

import pathlib

import numpy as np

from keras_cvt import explain, plots
from tests.test_explain import CANVAS, DIGIT, explain_before_and_after_training, peak_in_box

HERE = pathlib.Path(__file__).resolve().parent
SHOWN = 6


def class_token_attention(explanation):
    return explain.query_map(list(explanation.attention.values())[-1], "cls", (CANVAS, CANVAS))


def main():
    before, found, images, labels, corners = explain_before_and_after_training()
    maps = {
        "Grad-CAM": (before.cam, found.cam),
        "rollout": (before.rollout.image, found.rollout.image),
        "class token attention": (class_token_attention(before), class_token_attention(found)),
    }
    cells, heats, titles = [], [], []
    for name, (untrained, trained) in maps.items():
        print(
            f"{name}: peak in the digit's box {peak_in_box(trained, corners):.3f} trained, "
            f"{peak_in_box(untrained, corners):.3f} untrained (chance {DIGIT**2 / CANVAS**2:.3f})"
        )
        scaled = trained[:SHOWN] / trained[:SHOWN].reshape((SHOWN, -1)).max(axis=1)[:, None, None]
        for i in range(SHOWN):
            cells.append(images[i])
            heats.append(scaled[i])
            titles.append(f"{name}\ndigit {labels[i]}, says {np.argmax(found.outputs[i])}")
    figure = plots.overlay_grid(cells, heats, titles, columns=SHOWN, cell=(150, 190))
    plots.save(figure, HERE / "explain_digits.png")


if __name__ == "__main__":
    main()
