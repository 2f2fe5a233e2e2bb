"""``python -m bench``: the same as ``sam3-bench``."""

import sys

from bench.cli import main

sys.exit(main())
