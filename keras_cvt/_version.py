"""The package version, apart so that modules and setup.cfg read it without importing the rest."""

# 0.2: preprocess_input became a pass-through (keras.applications convention).
__version__ = "0.2.0"
