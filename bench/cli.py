"""``sam3-bench``: the benchmark, or ``sam3-bench soak`` for the soak test.

sam3-bench --model bench                    (see bench/run.py; python -m bench is the same)
sam3-bench soak --url http://127.0.0.1:8080 --requests 2000 --concurrency 8 --kill sam3_vision
                                            (see bench/soak.py)
sam3-bench ab --a 127.0.0.1:8001 --b 127.0.0.1:9001
                                            (two servers side by side, before/after: see bench/ab.py)
"""

from __future__ import annotations

import sys

from bench import ab, run, soak


def main(argv: list[str] | None = None) -> int:
    """Entry point of `sam3-bench`; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "soak":
        return soak.main(argv[1:])
    if argv and argv[0] == "ab":
        return ab.main(argv[1:])
    return run.main(argv)
