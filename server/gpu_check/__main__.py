"""``python -m server.gpu_check`` (same as ``sam3-triton gpu-check``)."""

import sys

from server.gpu_check.cli import main

sys.exit(main())
