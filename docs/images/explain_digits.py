"""Makes docs/images/explain_digits.png: Grad-CAM, rollout and the class token's attention of
the tiny CvT that tests/test_explain.py trains on pasted digits, and prints how often each
map's peak falls in the digit's box.

    PYTHONPATH=. python docs/images/explain_digits.py
"""

import pathlib

import numpy as np

from keras_cvt import explain, plots
from tests.test_explain import CANVAS, chance_of_peaks, explain_before_and_after_training, in_box, peak_in_box

HERE = pathlib.Path(__file__).resolve().parent
SHOWN = 6


def class_token_attention(explanation):
    return explain.query_map(list(explanation.attention.values())[-1], "cls", (CANVAS, CANVAS))


def main():
    before, found, images, labels, corners, others = explain_before_and_after_training()
    maps = {
        "Grad-CAM": (before.cam, found.cam),
        "rollout": (before.rollout.image, found.rollout.image),
        "class token attention": (class_token_attention(before), class_token_attention(found)),
    }
    cells, heats, titles = [], [], []
    for name, (untrained, trained) in maps.items():
        print(
            f"{name}: peak in the digit's box {peak_in_box(trained, corners):.3f} trained "
            f"(chance {chance_of_peaks(trained)[0]:.3f}), {peak_in_box(untrained, corners):.3f} untrained "
            f"(chance {chance_of_peaks(untrained)[0]:.3f} +- {chance_of_peaks(untrained)[1]:.3f}); on the "
            f"distractor {in_box(trained, others).mean():.3f} trained, {in_box(untrained, others).mean():.3f} untrained; "
            f"trained on 0s / 1s {peak_in_box(trained[labels == 0], corners[labels == 0]):.3f} / "
            f"{peak_in_box(trained[labels == 1], corners[labels == 1]):.3f}"
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
