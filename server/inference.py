"""One cancellable `sam3` inference over gRPC, for the gateway (cancelled when its HTTP client goes away).

    caller = TritonCaller("127.0.0.1:8001", timeout_s=300)
    call = caller.start(image_bytes, "point", {"points": [[10, 20]], "mask_format": "rle"})  # returns at once
    await call.wait()          # asyncio; call.cancel() stops it in Triton (queued requests are dropped)
    seg = call.segmentation()  # client.results.Segmentation, or raises client.api.Sam3Error

Inputs are built exactly as ``client.api.Sam3Client.segment`` builds them (``input_array`` from the
spec). The per-request limit ``timeout_s`` is both the gRPC deadline and Triton's request timeout
(microseconds; honoured where the model's queue policy allows a timeout override).
"""

from __future__ import annotations

import asyncio
import threading

from tritonclient.utils import InferenceServerException

from client.api import INPUT_SPECS, MODEL_NAME, Sam3Error, concepts_of, input_array, message_of, status_of
from client.images import encode_image_input
from client.results import OUTPUT_SPECS, segmentation_from_outputs


class TritonCall:
    """A running inference: :meth:`wait` (asyncio), :meth:`cancel`, :meth:`segmentation`."""

    def __init__(self, mode: str, fields: dict, loop: asyncio.AbstractEventLoop):
        self.mode, self.fields, self._loop = mode, fields, loop
        self._finished = asyncio.Event()
        self._result = self._error = None
        self._context = None
        self.doomed = False  # set when the gateway abandons it (its stage died)

    def attach(self, context) -> None:
        self._context = context

    def finish(self, result=None, error=None) -> None:
        """tritonclient's callback (a gRPC thread): keep the outcome, wake :meth:`wait`."""
        self._result, self._error = result, error
        self._loop.call_soon_threadsafe(self._finished.set)

    async def wait(self) -> None:
        await self._finished.wait()

    def cancel(self) -> None:
        """Cancel the gRPC call: Triton drops the request if it still waits in a queue."""
        if self._context is not None:
            self._context.cancel()

    def segmentation(self):
        """The result as a Segmentation; Sam3Error (status from the gRPC code) when it failed."""
        if self._error is not None:
            raise Sam3Error(message_of(self._error), status_of(self._error), "grpc")
        outputs = {name: self._result.as_numpy(name) for name in OUTPUT_SPECS}
        return segmentation_from_outputs(outputs, concepts_of(self.mode, self.fields), self.mode)


class TritonCaller:
    """Starts `sam3` inferences on one gRPC address (one tritonclient connection per thread)."""

    def __init__(self, grpc_url: str, timeout_s: float):
        self.grpc_url, self.timeout_s = grpc_url, float(timeout_s)
        self._local = threading.local()
        self._opened, self._lock = [], threading.Lock()

    def start(self, image: bytes | None, mode: str, fields: dict, loop: asyncio.AbstractEventLoop) -> TritonCall:
        """Send the request without waiting (call from a worker thread: encoding takes CPU).

        Raises Sam3Error (Sam3InputError for a field the spec rejects) when it cannot be sent.
        """
        call = TritonCall(mode, fields, loop)
        values = {"image": None if image is None else encode_image_input(image), "mode": mode, **fields}
        inputs = [self._input(name, value) for name, value in values.items() if value is not None]
        try:
            context = self._transport().async_infer(MODEL_NAME, inputs, call.finish, client_timeout=self.timeout_s,
                                                    timeout=int(self.timeout_s * 1e6))
        except InferenceServerException as err:  # refused before it was sent (e.g. the channel is down)
            raise Sam3Error(message_of(err), status_of(err), "grpc") from err
        call.attach(context)
        return call

    def _input(self, name: str, value):
        import tritonclient.grpc as grpcclient
        array = input_array(name, value)
        tensor = grpcclient.InferInput(name, list(array.shape), INPUT_SPECS[name].dtype)
        tensor.set_data_from_numpy(array)
        return tensor

    def _transport(self):
        transport = getattr(self._local, "transport", None)
        if transport is None:
            import tritonclient.grpc as grpcclient
            transport = self._local.transport = grpcclient.InferenceServerClient(self.grpc_url)
            with self._lock:
                self._opened.append(transport)
        return transport

    def close(self) -> None:
        """Close every connection (tritonserver's shutdown waits for open client connections)."""
        with self._lock:
            opened, self._opened, self._local = self._opened, [], threading.local()
        for transport in opened:
            transport.close()
