"""`sam3` inferences the gateway can cancel from another thread (its HTTP client left, or the stage died).

    client = CancellableClient("127.0.0.1:8001", timeout_s=300)
    ticket = Ticket()
    seg = client.segment_cancellable(ticket, image_bytes, "point", points=[[10, 20]])  # in a worker thread
    ticket.cancel()             # from any thread: the gRPC call is cancelled, Triton drops it if still queued

:class:`CancellableClient` is ``client.api.Sam3Client`` (inputs, outputs and errors exactly as the
library builds them); only its transport call ``infer`` becomes tritonclient's ``async_infer``,
whose call context can be cancelled. ``timeout_s`` is both the gRPC deadline and Triton's request
timeout (microseconds; honoured where the model's queue policy allows a timeout override).
"""

from __future__ import annotations

import threading

from tritonclient.utils import InferenceServerException

from client.api import Sam3Client, Sam3Error, message_of, status_of

CALLBACK_GRACE_S = 30.0  # beyond the gRPC deadline, how long to wait for tritonclient's callback


class Ticket:
    """A handle on one inference: :meth:`cancel` from any thread; ``doomed`` marks one abandoned
    because its stage died (the gateway then answers 503)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._context = None
        self.cancelled = self.doomed = False

    def attach(self, context) -> None:
        """Called when the gRPC call starts; cancels it at once if :meth:`cancel` came first."""
        with self._lock:
            self._context, cancelled = context, self.cancelled
        if cancelled:
            context.cancel()

    def cancel(self) -> None:
        with self._lock:
            self.cancelled, context = True, self._context
        if context is not None:
            context.cancel()


class CancellableClient(Sam3Client):
    """Sam3Client over gRPC whose ``infer`` calls can be cancelled through a :class:`Ticket`."""

    def __init__(self, url: str, timeout_s: float = 300.0, **kwargs):
        super().__init__(url, protocol="grpc", timeout_s=timeout_s, **kwargs)
        self._tickets = threading.local()

    def segment_cancellable(self, ticket: Ticket, image, mode: str, **fields):
        """:meth:`Sam3Client.segment` whose Triton call ``ticket`` can cancel (blocks this thread)."""
        self._tickets.current = ticket
        try:
            return self.segment(image, mode, **fields)
        finally:
            self._tickets.current = None

    def _call(self, method: str, *args, **kwargs):
        ticket = getattr(self._tickets, "current", None)
        if method != "infer" or ticket is None:
            return super()._call(method, *args, **kwargs)
        return self._infer_cancellable(ticket, *args, **kwargs)

    def _infer_cancellable(self, ticket: Ticket, model: str, inputs, **kwargs):
        """tritonclient async_infer, waited for here; Sam3Error (status from the gRPC code) on failure."""
        done, outcome = threading.Event(), {}

        def finish(result=None, error=None):
            outcome.update(result=result, error=error)
            done.set()

        try:
            context = self._transport().async_infer(
                model, inputs, finish, headers=self.headers or None, timeout=int(self.timeout_s * 1e6), **kwargs
            )
        except InferenceServerException as err:  # refused before it was sent
            raise Sam3Error(message_of(err), status_of(err), self.protocol) from err
        ticket.attach(context)
        if not done.wait(self.timeout_s + CALLBACK_GRACE_S):
            ticket.cancel()
            raise Sam3Error(f"no answer within {self.timeout_s:g} s", 504, self.protocol)
        if outcome["error"] is not None:
            raise Sam3Error(message_of(outcome["error"]), status_of(outcome["error"]), self.protocol)
        return outcome["result"]
