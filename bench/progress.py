"""Progress lines of the benchmark on stderr (stdout carries only the report table)."""

from __future__ import annotations

import sys
import time


def log(message: str) -> None:
    """Progress line on stderr, prefixed with the wall-clock time (HH:MM:SS)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
