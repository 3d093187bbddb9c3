"""Trained-like weights for the benchmarks, on every side alike."""

import numpy as np


def perturb(weights, read, write, name, seed=0):
    """Adds small noise to every weight, positive to BatchNorm variances. Fresh initialisers
    give zero biases and unit scales, which a graph optimiser deletes from a graph whose weights
    are constants (`freeze_for_inference`); trained weights have none, so neither may the
    benchmark's. Both sides are perturbed alike."""
    rng = np.random.default_rng(seed)
    for w in weights:
        value = read(w)
        noise = rng.normal(0.0, 0.02, value.shape).astype(value.dtype)
        write(w, value + (np.abs(noise) if "var" in name(w) else noise))
