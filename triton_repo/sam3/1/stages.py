"""How the orchestrator calls the four component models.

Two interchangeable back ends with one interface, the coroutine
``await arun(component, feeds, outputs=None) -> {name: array}`` (and its blocking twin ``run``;
``outputs``: the output names to ask for, default all of the component's):

- :class:`BlsStages` — inside Triton: BLS requests to the ``sam3_<component>`` models with
  ``async_exec``, so the pipeline overlaps the calls of several requests (and vision ‖ text).
  GPU outputs stay on the GPU (DLPack → torch) and GPU inputs are passed by DLPack.
- :class:`OrtStages` — the same ONNX graphs in in-process ONNX Runtime sessions (tests,
  embedded use without a server).
"""

from __future__ import annotations


class StageError(RuntimeError):
    """A component model failed (a server-side error, not the user's input)."""


class BlsStages:
    """Component calls through Triton BLS. ``outputs``: {component: [output names]}."""

    def __init__(self, pb_utils, outputs: dict[str, list[str]], prefix: str = "sam3_"):
        self.pb = pb_utils
        self.outputs = outputs
        self.prefix = prefix

    def _request(self, component: str, feeds: dict, outputs: list):
        tensors = [self._tensor(name, value) for name, value in feeds.items()]
        return self.pb.InferenceRequest(
            model_name=self.prefix + component, inputs=tensors, requested_output_names=outputs
        )

    def _tensor(self, name: str, value):
        if is_torch(value):
            return self.pb.Tensor.from_dlpack(name, value)
        return self.pb.Tensor(name, value)

    def _unpack(self, component: str, response, outputs: list) -> dict:
        if response.has_error():
            raise StageError(f"{self.prefix}{component} failed: {response.error().message()}")
        returned = {tensor.name(): tensor for tensor in response.output_tensors()}  # one pass, not one per name
        if missing := [name for name in outputs if name not in returned]:
            raise StageError(f"{self.prefix}{component} returned no {', '.join(missing)}")
        return {name: _array(returned[name]) for name in outputs}

    def run(self, component: str, feeds: dict, outputs: list | None = None) -> dict:
        outputs = outputs or self.outputs[component]
        return self._unpack(component, self._request(component, feeds, outputs).exec(), outputs)

    async def arun(self, component: str, feeds: dict, outputs: list | None = None) -> dict:
        outputs = outputs or self.outputs[component]
        return self._unpack(component, await self._request(component, feeds, outputs).async_exec(), outputs)


def is_torch(value) -> bool:
    """A torch tensor (GPU target), told apart without importing torch."""
    return type(value).__module__.startswith("torch")


def _array(tensor):
    """A BLS output as numpy (CPU) or a torch tensor (GPU, zero-copy by DLPack)."""
    if tensor.is_cpu():
        return tensor.as_numpy()
    import torch  # noqa: PLC0415 (GPU target only)

    return torch.from_dlpack(tensor.to_dlpack())


class OrtStages:
    """The component graphs run in-process by ONNX Runtime (CPU). ``files``: {component: path}."""

    def __init__(self, files: dict, threads: int = 0):
        import onnxruntime as ort  # noqa: PLC0415 (in-process runs only: tests and tools)

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.sessions = {
            c: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for c, p in files.items()
        }

    def run(self, component: str, feeds: dict, outputs: list | None = None) -> dict:
        session = self.sessions[component]
        names = outputs or [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, feeds)))

    async def arun(self, component: str, feeds: dict, outputs: list | None = None) -> dict:
        return self.run(component, feeds, outputs)
