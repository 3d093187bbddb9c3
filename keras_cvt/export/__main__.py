"""`python -m keras_cvt.export ...`: see `keras_cvt.export.cli`."""

import sys

from keras_cvt.export.cli import main

sys.exit(main())
