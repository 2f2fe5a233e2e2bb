"""The container images' build steps (the pins themselves live in export/trt/pins.py)."""

from __future__ import annotations

import shlex

from export.trt import SETUPTOOLS_PIP

# The Triton image (Ubuntu 24.04, Python 3.12) links only /usr/bin/python3; Modal runs `python`.
TRITON_SETUP = (
    "RUN ln -sf /usr/bin/python3 /usr/local/bin/python",
    "RUN python -m pip --version || (apt-get update && apt-get install -y --no-install-recommends python3-pip)",
)


def pip_steps(packages) -> list[str]:
    """Shell commands installing ``packages`` into the Triton image's system Python, in order.

    setuptools first, with --ignore-installed: torch needs setuptools ≥ 77, and pip cannot
    uninstall the distro's setuptools 68 ("RECORD file not found"), so the new one goes beside it
    (/usr/local/lib/python3.12/dist-packages comes first on sys.path).
    """
    return [
        shlex.join(["python", "-m", "pip", "install", "--no-cache-dir", "--ignore-installed", SETUPTOOLS_PIP]),
        shlex.join(["python", "-m", "pip", "install", "--no-cache-dir", *packages]),
    ]
