"""Typed errors of the sam3 orchestrator (standard library only)."""


class InputError(ValueError):
    """A request carries bad input (undecodable image, out-of-range coordinates, empty text, ...).

    The message says what is wrong and how to fix it. The orchestrator turns it into a
    per-request client error (HTTP 400 at the gateway); it never fails the other requests
    of a batch.
    """


class RequestCancelled(Exception):
    """The request's client left or timed out while it ran: the orchestrator stopped its remaining work and
    answers it CANCELLED (nobody reads that answer; Triton records it)."""
