"""Makes docs/images/explain_digits.png: the class activation maps, rollout and class token's
attention of the tiny CvT that tests/test_explain.py trains on pasted digits, and prints how
often each map's peak falls in the digit's box.

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
    found = explain_before_and_after_training()
    default = explain.CAM_METHODS[0]
    before, after = found.untrained[default], found.trained[default]
    maps = {
        **{method: (found.untrained[method].cam, found.trained[method].cam) for method in explain.CAM_METHODS},
        "rollout": (before.rollout.image, after.rollout.image),
        "class token attention": (class_token_attention(before), class_token_attention(after)),
    }
    images, labels, corners, others = found.held_out
    _, _, turned_corners, turned_others = found.turned
    print(f"top-1 {np.mean(after.outputs.argmax(axis=1) == labels):.4f}")
    cells, heats, titles = [], [], []
    for name, (untrained, trained) in maps.items():
        chance, deviation = chance_of_peaks(trained)
        print(
            f"{name}: trained, on the digit {peak_in_box(trained, corners):.4f} (chance {chance:.3f} +- "
            f"{deviation:.3f}), on the distractor {in_box(trained, others).mean():.4f}; untrained, on the digit "
            f"{peak_in_box(untrained, turned_corners):.4f}, on the turned copy {in_box(untrained, turned_others).mean():.4f}"
        )
        if name == "hirescam":
            continue
        scaled = trained[:SHOWN] / trained[:SHOWN].reshape((SHOWN, -1)).max(axis=1)[:, None, None]
        for i in range(SHOWN):
            cells.append(images[i])
            heats.append(scaled[i])
            titles.append(f"{name}\ndigit {labels[i]}, says {np.argmax(after.outputs[i])}")
    figure = plots.overlay_grid(cells, heats, titles, columns=SHOWN, cell=(150, 190))
    plots.save(figure, HERE / "explain_digits.png")


if __name__ == "__main__":
    main()
