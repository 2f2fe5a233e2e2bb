"""The manifest written beside the exported graphs (``manifest.json``).

It records what was exported (model id/revision, dims, tensor specs, file hashes, tool
versions) so that repository generation, TensorRT building and serving never guess.
Pure standard library: serving code reads it without torch.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sam3_spec import COMPONENTS, ComponentSpec, Dims, component_specs

MANIFEST_NAME = "manifest.json"
TOKENIZER_NAME = "tokenizer.json"
PARITY_NAME = "parity_report.json"


class ManifestError(RuntimeError):
    """The artifacts directory is missing files or they do not match the manifest."""


@dataclass
class Manifest:
    """Contents of manifest.json. ``components`` maps name → {"file", "sha256", "bytes"}."""

    model: str
    revision: str
    dims: Dims
    components: dict[str, dict] = field(default_factory=dict)
    tokenizer: str = TOKENIZER_NAME
    versions: dict[str, str] = field(default_factory=dict)
    config_summary: dict = field(default_factory=dict)

    def specs(self) -> dict[str, ComponentSpec]:
        """Specs of the components this manifest holds, in COMPONENTS order."""
        return component_specs(self.dims, [c for c in COMPONENTS if c in self.components])

    def to_json(self) -> dict:
        data = asdict(self)
        data["tensors"] = {name: _spec_json(s) for name, s in self.specs().items()}
        return data

    def save(self, directory: Path) -> Path:
        path = Path(directory) / MANIFEST_NAME
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path


def _spec_json(spec: ComponentSpec) -> dict:
    def tensors(ts):
        return [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in ts]

    profiles = {k: asdict(p) for k, p in spec.profiles.items()}
    return {"inputs": tensors(spec.inputs), "outputs": tensors(spec.outputs), "profiles": profiles}


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_entry(path: Path) -> dict:
    """Manifest entry of one artifact file: name, sha256, size in bytes, and its external-data files."""
    path = Path(path)
    entry = {"file": path.name, "sha256": sha256(path), "bytes": path.stat().st_size}
    sidecars = sorted(path.parent.glob(path.name + ".*"))  # ONNX external data (graphs over 2 GB)
    if sidecars:
        entry["external_data"] = [file_entry(p) for p in sidecars]
    return entry


def load_manifest(directory: Path, check_hashes: bool = False) -> Manifest:
    """Read ``directory/manifest.json``; raise ManifestError naming every missing/changed file."""
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{path} not found: run `python -m export onnx --out {directory}` first")
    data = json.loads(path.read_text())
    recorded = data.pop("tensors", None)
    manifest = Manifest(**{**data, "dims": Dims(**data["dims"])})
    problems = _contract_changes(manifest, recorded) + [
        p for name, entry in manifest.components.items() for p in _check_entry(directory, name, entry, check_hashes)
    ]
    if not (directory / manifest.tokenizer).is_file():
        problems.append(f"tokenizer file {manifest.tokenizer} missing")
    if problems:
        raise ManifestError(f"artifacts in {directory} do not match the manifest: " + "; ".join(problems))
    return manifest


def _contract_changes(manifest: Manifest, recorded: dict | None) -> list[str]:
    """The components whose graph inputs/outputs (names, dtypes, shapes) at export time differ from
    today's sam3_spec.py: artifacts of an older contract, to be exported again (none recorded: none)."""
    changes = []
    for name, spec in manifest.specs().items():
        then = (recorded or {}).get(name)
        if then is None:
            continue
        now = _spec_json(spec)
        for kind in ("inputs", "outputs"):
            diff = _tensors_diff(then[kind], now[kind])
            if diff:
                changes.append(f"{name} {kind} {diff}")
    return changes


def _tensors_diff(then: list[dict], now: list[dict]) -> str:
    """How recorded tensors differ from the contract's: their names, else each changed dtype/shape ('' if equal)."""
    was, want = [t["name"] for t in then], [t["name"] for t in now]
    if was != want:
        return f"were exported as {was}, the contract now has {want}"
    return "; ".join(
        f"{a['name']} was exported as {a['dtype']} {a['shape']}, the contract now has {b['dtype']} {b['shape']}"
        for a, b in zip(then, now)
        if a != b
    )


def _check_entry(directory: Path, name: str, entry: dict, check_hashes: bool) -> list[str]:
    path = directory / entry["file"]
    if not path.is_file():
        return [f"{name}: {entry['file']} missing"]
    if check_hashes and sha256(path) != entry["sha256"]:
        return [f"{name}: {entry['file']} sha256 differs from the manifest"]
    return [
        p for sidecar in entry.get("external_data", []) for p in _check_entry(directory, name, sidecar, check_hashes)
    ]
