"""Precision rules as data, and the order the parity gate tries them in.

A reduced-precision engine (FP16/BF16) keeps some layers in FP32. Which ones is a
:class:`PrecisionRules` (a named rule set), never code. A rule names ONNX op types and
exporting modules; the build maps every TensorRT layer back to its ONNX node (through the
layer metadata TensorRT's ONNX parser writes, else the layer name):

* ``fused``: normalizations in FP32 — every layer of a norm *module* (so hand-written norms
  keep their Sub/Pow/Add/Div/Sqrt in FP32 too, not only the ReduceMean) — and attention left
  alone, so TensorRT may use its fused FP16 attention kernels (fast).
* ``explicit``: the same plus every Softmax in FP32. A precision constraint on the Softmax
  breaks the MatMul-Softmax-MatMul fusion, so attention runs as explicit layers. Known trap:
  a SAM3 backbone engine with fused FP16 attention measured cosine 0.058 against PyTorch,
  while explicit attention gave 0.999.

The parity gate (export.trt.build) builds with the first rule set of a component's ladder,
checks the engine against ONNX Runtime, and on a parity failure OR a build error moves to the
next rule set, and finally to a plain FP32 engine. Constraints are *preferred*
(PREFER_PRECISION_CONSTRAINTS), so a pinned layer without an FP32 tactic cannot abort a build;
the parity check decides whether the result is good enough.

Everything here is pure Python (ONNX is read with the ``onnx`` package, lazily).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from sam3_spec import COMPONENTS

PRECISIONS = ("fp32", "fp16", "bf16")
DEFAULT_BUILD_PRECISION = "fp16"  # FP16 (10-bit mantissa) beats BF16 (7-bit) once overflow is handled
DEFAULT_PRECISION = {name: DEFAULT_BUILD_PRECISION for name in COMPONENTS}


@dataclass(frozen=True)
class Tolerance:
    """An engine output passes if cosine ≥ min_cosine OR max |engine − onnx| ≤ atol.

    (The atol branch lets tiny outputs such as one presence logit pass on absolute error,
    where cosine of a 1-element vector only says whether the signs agree.)
    """

    min_cosine: float
    atol: float


PARITY_TOLERANCE = {"fp32": Tolerance(0.9999, 1e-3), "fp16": Tolerance(0.999, 1e-2), "bf16": Tolerance(0.995, 5e-2)}


@dataclass(frozen=True)
class PrecisionRules:
    """Which layers stay FP32 in a reduced-precision engine.

    fp32_ops: ONNX op types (see ONNX_OP_KINDS); fp32_modules: regexes matched against the
    class hierarchy the exporter records on each ONNX node (``pkg.torch.onnx.class_hierarchy``);
    every node inside a matching module is pinned.
    """

    name: str
    fp32_ops: tuple[str, ...]
    fp32_modules: tuple[str, ...]
    doc: str = ""


NORM_OPS = ("LayerNormalization", "GroupNormalization", "InstanceNormalization", "ReduceMean", "Pow", "Sqrt")
NORM_MODULES = (r"Norm(2d)?$",)  # torch LayerNorm/GroupNorm, Sam3TrackerLayerNorm, hand-written LayerNorm2d ...

RULE_SETS = {
    "fused": PrecisionRules(
        "fused", NORM_OPS, NORM_MODULES, "norms in FP32; attention free for TensorRT's fused FP16 kernels"
    ),
    "explicit": PrecisionRules(
        "explicit",
        NORM_OPS + ("Softmax",),
        NORM_MODULES,
        "norms and every Softmax in FP32 (explicit attention, no fusion)",
    ),
}
DEFAULT_LADDER = ("fused", "explicit")  # tried in this order; plain FP32 is the last resort
COMPONENT_LADDER: dict[str, tuple[str, ...]] = {}  # per-component override, e.g. {"vision": ("explicit",)}
FP32_RULES = PrecisionRules("none", (), (), "plain FP32 engine: nothing to pin")

# ONNX op → TensorRT layer kinds it becomes. A kind is "<LayerType>" or "<LayerType>.<operation>".
ONNX_OP_KINDS = {
    "Softmax": ("SOFTMAX",),
    "LayerNormalization": ("NORMALIZATION",),
    "GroupNormalization": ("NORMALIZATION",),
    "InstanceNormalization": ("NORMALIZATION",),
    "ReduceMean": ("REDUCE.AVG",),
    "ReduceSum": ("REDUCE.SUM",),
    "Pow": ("ELEMENTWISE.POW",),
    "Sqrt": ("UNARY.SQRT",),
    "Reciprocal": ("UNARY.RECIP",),
    "Erf": ("UNARY.ERF",),
    "Exp": ("UNARY.EXP",),
}


@dataclass(frozen=True)
class Attempt:
    """One build the parity gate may try: precision + the rule set pinning layers to FP32."""

    precision: str
    rules: PrecisionRules

    @property
    def label(self) -> str:
        return self.precision if self.precision == "fp32" else f"{self.precision}/{self.rules.name}"


def check_precision(precision: str) -> str:
    """``precision`` if it is one of PRECISIONS, else ValueError."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def ladder(component: str) -> tuple[str, ...]:
    """Rule-set names a component's reduced-precision build tries, in order."""
    names = COMPONENT_LADDER.get(component, DEFAULT_LADDER)
    unknown = [n for n in names if n not in RULE_SETS]
    if unknown:
        raise ValueError(f"{component}: unknown precision rule sets {unknown}; known: {list(RULE_SETS)}")
    return names


def attempts(component: str, precision: str, fallback: bool = True) -> list[Attempt]:
    """The builds to try for ``component`` at ``precision``, best first.

    fp32 → one plain FP32 build. fp16/bf16 → each rule set of the ladder, then FP32;
    without ``fallback`` only the first of these.
    """
    check_precision(precision)
    plans = [] if precision == "fp32" else [Attempt(precision, RULE_SETS[n]) for n in ladder(component)]
    plans.append(Attempt("fp32", FP32_RULES))
    return plans if fallback else plans[:1]


def attempts_key(plan: Sequence[Attempt]) -> str:
    """A short hash of the attempts and their rules (recorded with an engine; see files.engine_is_current)."""
    data = [[a.precision, a.rules.name, list(a.rules.fp32_ops), list(a.rules.fp32_modules)] for a in plan]
    return hashlib.sha256(json.dumps(data).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- per-layer decision


def fp32_kinds(fp32_ops: Sequence[str]) -> set[str]:
    """TensorRT layer kinds (see ONNX_OP_KINDS) of the given ONNX op types."""
    return {kind for op in fp32_ops for kind in ONNX_OP_KINDS.get(op, ())}


def _op_token(layer_name: str) -> str:
    """ONNX op name inside a parser layer name: '/attn/Softmax_3' → 'softmax', 'node_Softmax_15_output_0' → 'softmax'."""
    last = re.split(r"[/.:]", layer_name)[-1]
    last = re.sub(r"^(node_|aten_)", "", last, flags=re.IGNORECASE)
    return re.sub(r"(_\d+|_output)*$", "", last).lower()


def node_of_layer(layer_name: str, node_names: set[str] | frozenset[str]) -> str | None:
    """The ONNX node a TensorRT layer came from: its exact name, or the longest node name the layer
    name starts with followed by a non-alphanumeric character ('node_Div_1_2' → 'node_Div_1')."""
    if layer_name in node_names:
        return layer_name
    found = [n for n in node_names if layer_name.startswith(n) and not layer_name[len(n)].isalnum()]
    return max(found, key=len, default=None)


def onnx_nodes_of(metadata: str) -> list[str]:
    """ONNX node names in a TensorRT layer's metadata ("[ONNX Layer: node_Softmax_3]", which the
    ONNX parser of TensorRT 10 writes on every layer it creates for a node)."""
    return re.findall(r"\[ONNX Layer: ([^\]]+)\]", metadata or "")


def layer_precision(
    kind: str,
    layer_name: str,
    rules: PrecisionRules,
    precision: str,
    fp32_nodes: frozenset[str] = frozenset(),
    metadata: str = "",
) -> str:
    """Precision of one layer: "fp32" if ``rules`` pin it, else ``precision``.

    A layer is pinned when its kind or its name's op token is one of ``rules.fp32_ops``, or when
    the ONNX node it came from is in ``fp32_nodes`` (see fp32_nodes()): the node named in the
    layer's ``metadata`` if any, else the one its name starts with. kind: "SOFTMAX",
    "REDUCE.AVG", "ELEMENTWISE.POW", ... (build.layer_kind()); layer_name: the TensorRT layer
    name, which the ONNX parser derives from the ONNX node name.
    """
    check_precision(precision)
    if precision == "fp32":
        return "fp32"
    if kind in fp32_kinds(rules.fp32_ops) or _op_token(layer_name) in {op.lower() for op in rules.fp32_ops}:
        return "fp32"
    nodes = onnx_nodes_of(metadata) or [node_of_layer(layer_name, fp32_nodes)]
    return "fp32" if any(n in fp32_nodes for n in nodes if n) else precision


# ---------------------------------------------------------------- ONNX module scan


def node_module_classes(node) -> list[str]:
    """Class names (last dotted part) of the module hierarchy recorded on an ONNX node."""
    meta = {p.key: p.value for p in node.metadata_props}
    hierarchy = meta.get("pkg.torch.onnx.class_hierarchy", "")
    return [part.rsplit(".", 1)[-1] for part in re.findall(r"'([^']+)'", hierarchy)]


def fp32_nodes(onnx_path: Path, rules: PrecisionRules) -> frozenset[str]:
    """Names of the ONNX nodes ``rules`` pin: of an op type in ``rules.fp32_ops``, or inside a module
    matching ``rules.fp32_modules`` (reads the graph only, not the weights)."""
    if not (rules.fp32_ops or rules.fp32_modules):
        return frozenset()
    import onnx  # noqa: PLC0415 (optional: export extra)

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    patterns = [re.compile(p) for p in rules.fp32_modules]
    return frozenset(
        n.name
        for n in graph.node
        if n.op_type in rules.fp32_ops or any(p.search(cls) for cls in node_module_classes(n)[:-1] for p in patterns)
    )


# ---------------------------------------------------------------- arguments


def parse_precision(arg: str | Mapping[str, str] | None, components: Sequence[str]) -> dict[str, str]:
    """{component: precision}: DEFAULT_PRECISION overridden by ``arg``.

    arg: None (defaults), one precision for all ("fp16"), "vision=bf16,text=fp32", or a dict.
    """
    result = {c: DEFAULT_PRECISION.get(c, DEFAULT_BUILD_PRECISION) for c in components}
    if arg is None or arg == "":
        return result
    if isinstance(arg, str) and "=" not in arg:
        return {c: check_precision(arg.strip()) for c in components}
    pairs = arg.items() if isinstance(arg, Mapping) else (p.split("=", 1) for p in arg.split(",") if p.strip())
    for name, value in pairs:
        name = name.strip()
        if name not in components:
            raise ValueError(f"precision given for {name!r}, which is not among the components {list(components)}")
        result[name] = check_precision(value.strip())
    return result


def check_components(components: Sequence[str] | str | None, known: Sequence[str] = COMPONENTS) -> list[str]:
    """Component names in ``known`` order (None or "" = all); ValueError naming unknown ones."""
    if components is None or components == "":
        return list(known)
    names = [c.strip() for c in components.split(",")] if isinstance(components, str) else list(components)
    unknown = [c for c in names if c not in known]
    if unknown:
        raise ValueError(f"unknown component(s) {unknown}; choose from {list(known)}")
    return [c for c in known if c in names]
