"""What the gateway tells a client when the model server fails: status, safe message, error id, Retry-After.

    failure = classify(status, message, recovering=False)   # → Failure(status, message, retry_after_s)
    public_message("Traceback ... File \"/srv/x.py\" ...")   # → text without tracebacks or file paths

Rules (one table, :data:`RETRYABLE`): the server's queue is full or a request waited too long in
it → 503 "at capacity"; Triton unreachable (restarting) → 503; a stage is dead or being reloaded →
503 "recovering"; any other 5xx while the watchdog heals a stage → 503; the client's time limit → 504. Each comes with a ``Retry-After``.
Anything else is a 502 whose message is cut to its first line, stripped of paths, and tagged with
an error id that the server log repeats next to the full text.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

MAX_MESSAGE = 300
OVERLOAD_RETRY_S = 1
_TRACEBACK = re.compile(r"Traceback \(most recent call last\):.*", re.DOTALL)
_FRAME = re.compile(r'\s*File "[^"]*", line \d+[^\n]*')
_PATH = re.compile(r"""(?<![\w.:/])(?:[A-Za-z]:)?(?:[/\\][\w.@+~-]+){2,}[/\\]?""")

# (pattern in the server's message, what the client is told); first match wins. All are 503 + Retry-After.
RETRYABLE = (
    (
        re.compile(r"exceeds maximum queue size|request timeout expired", re.IGNORECASE),
        "the model server is at capacity (its request queue is full or the request waited too long in it)",
    ),
    (
        re.compile(r"failed to connect|connection refused|socket closed|cannot reach|connect failed", re.IGNORECASE),
        "cannot reach the model server (it is restarting, or down)",
    ),
    (
        re.compile(r"Stub process '[^']+' is not healthy|unknown model|is not ready|not found", re.IGNORECASE),
        "the model server is recovering from a failed stage",
    ),
)


@dataclass(frozen=True)
class Failure:
    """A failed request as the client sees it: HTTP ``status``, safe ``message``, ``retry_after_s`` (or None)."""

    status: int
    message: str
    retry_after_s: int | None = None


def new_error_id() -> str:
    """A short random id that ties a client's error to the server log line with the details."""
    return uuid.uuid4().hex[:12]


def public_message(message: str) -> str:
    """``message`` without tracebacks, stack frames or file paths; first line only, at most MAX_MESSAGE chars."""
    text = _FRAME.sub("", _TRACEBACK.sub("", message or ""))
    text = _PATH.sub("<path>", text).strip()
    first = text.splitlines()[0].strip() if text else "no details"
    return first if len(first) <= MAX_MESSAGE else first[: MAX_MESSAGE - 3] + "..."


def classify(status: int, message: str, recovering: bool, retry_after_s: int = 5) -> Failure:
    """The client's view of a model-server error with HTTP-like ``status`` and the server's ``message``.

    recovering: the watchdog is healing a stage (or finished while this request ran) → 503.
    retry_after_s: Retry-After for a recovery; a full queue always says OVERLOAD_RETRY_S.
    """
    for i, (pattern, meaning) in enumerate(RETRYABLE):
        if pattern.search(message or ""):
            wait = OVERLOAD_RETRY_S if i == 0 else retry_after_s
            return Failure(503, f"{meaning}; retry in {wait} s", wait)
    if status == 504:
        return Failure(
            504,
            f"the model server did not answer in time ({public_message(message)}); send a "
            "smaller request or retry later",
            retry_after_s,
        )
    if status == 503 or recovering:
        return Failure(503, f"the model server is unavailable or recovering; retry in {retry_after_s} s", retry_after_s)
    return Failure(502, f"the model server failed: {public_message(message)}")
