"""The one contract: every tensor of every served model, declared once as data.

Everything that needs tensor names, dtypes or shapes is generated from this module:
ONNX export arguments (``export/onnx_export.py``), TensorRT optimization profiles
(``export/trt/``), Triton ``config.pbtxt`` files (``export/repository.py``), the
orchestrator and the clients. This module imports only the standard library so that
serving and client code can use it without torch.

Shapes are tuples whose entries are either an ``int`` (static) or a ``str`` naming a
dynamic axis. Each component declares a :class:`Profile` (min / opt / max) for every
dynamic axis name it uses.

It is a top-level module, not part of ``export``, so every layer (export, client, server, bench)
depends on it and not on each other, and the served orchestrator imports it as ``sam3_spec``:
``triton_repo/sam3/1/sam3_spec.py`` is a link to this file, copied as a file into model repositories.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

# Triton / numpy dtype names used everywhere (config.pbtxt uses "TYPE_" + name).
NP_DTYPES = {
    "UINT8": "uint8",
    "BOOL": "bool",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "BYTES": "object",
}

TEXT_LENGTH = 32  # CLIP context length used by SAM3; text is always padded to it.
AMG_PROMPTS_PER_CALL = 16  # auto mode's grid points per sam3_prompt call (the orchestrator's largest call)


@dataclass(frozen=True)
class Dims:
    """Model sizes read from a SAM3 config; every shape below is derived from these.

    image_size: square input side in px (1008 real); patch: ViT patch (14); hidden: the
    shared neck/DETR/tracker width (256); queries: DETR queries (200); text_hidden: CLIP
    width (1024).
    """

    image_size: int
    patch: int
    hidden: int
    queries: int
    text_hidden: int

    @property
    def grid(self) -> int:
        """ViT tokens per side (72 real)."""
        return self.image_size // self.patch

    @property
    def fpn_sizes(self) -> tuple[int, int, int]:
        """Detector FPN sides used by the concept head: 4g, 2g, g (288, 144, 72)."""
        return (4 * self.grid, 2 * self.grid, self.grid)

    @property
    def mask_size(self) -> int:
        """Side of the low-resolution masks of both heads (288 real)."""
        return 4 * self.grid


@dataclass(frozen=True)
class TensorSpec:
    """One tensor: name, dtype (a key of NP_DTYPES) and shape (ints or axis names).

    Request inputs also declare the value used when they are left out (``default``; () for an
    empty list), the closed interval a number must lie in (``bounds``) and the allowed words
    (``choices``): the orchestrator's request parser and the clients read them from here.
    """

    name: str
    dtype: str
    shape: tuple
    optional: bool = False
    doc: str = ""
    default: object = None
    bounds: tuple | None = None
    choices: tuple | None = None

    def dynamic_axes(self) -> dict[int, str]:
        """{axis index: axis name} for every dynamic axis (torch.onnx.export format)."""
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    def resolve(self, sizes: dict[str, int]) -> tuple[int, ...]:
        """Concrete shape with each dynamic axis replaced by ``sizes[name]``."""
        return tuple(sizes[d] if isinstance(d, str) else d for d in self.shape)

    def static_shape(self, sizes: dict[str, int]) -> tuple[int, ...]:
        """Shape of a static copy: each dynamic axis that ``sizes`` names fixed to its size, the others -1."""
        return tuple(sizes.get(d, -1) if isinstance(d, str) else d for d in self.shape)

    def triton_dims(self, batched: bool) -> list[int]:
        """Dims for config.pbtxt: dynamic axes become -1; the batch axis is dropped when batched."""
        shape = self.shape[1:] if batched else self.shape
        return [-1 if isinstance(d, str) else d for d in shape]


@dataclass(frozen=True)
class Profile:
    """Min / opt / max size of one dynamic axis (TensorRT profile, parity shapes, limits)."""

    min: int
    opt: int
    max: int


@dataclass(frozen=True)
class ComponentSpec:
    """One exported component: its tensors, dynamic-axis profiles and serving settings.

    ``batch_axis``: name of the leading dynamic axis Triton may batch over (None: the model
    is served with max_batch_size 0 and takes whole tensors). ``parity_sizes``: the axis
    sizes the export parity check runs at (≥2 shapes). ``static_sizes``: axis sizes of common
    requests that OpenVINO serves from static-shape copies of the graph, besides ``opt`` unless
    ``static_opt`` is False (``static_size_sets``). A set that leaves an axis out leaves it dynamic in
    its copy (``filled``: the sizes it is checked at).
    """

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    profiles: dict[str, Profile]
    parity_sizes: tuple[dict[str, int], ...]
    batch_axis: str | None = None
    static_sizes: tuple[dict[str, int], ...] = ()
    static_opt: bool = True
    doc: str = ""

    @property
    def triton_name(self) -> str:
        return f"{ORCHESTRATOR}_{self.name}"

    @property
    def onnx_file(self) -> str:
        return f"{self.name}.onnx"

    def tensor(self, name: str) -> TensorSpec:
        for t in self.inputs + self.outputs:
            if t.name == name:
                return t
        raise KeyError(f"{self.name} has no tensor {name!r}")

    def sizes(self, which: str) -> dict[str, int]:
        """{axis name: size} at 'min', 'opt' or 'max' of every profile."""
        return {axis: getattr(p, which) for axis, p in self.profiles.items()}

    def static_size_sets(self) -> list[dict[str, int]]:
        """The axis sizes served from static-shape copies on OpenVINO: ``opt`` (if ``static_opt``), then
        ``static_sizes``, once each."""
        sets = [self.sizes("opt")] if self.static_opt else []
        return sets + [s for s in self.static_sizes if s not in sets]

    def filled(self, sizes: dict[str, int]) -> list[dict[str, int]]:
        """``sizes`` with each axis it leaves out at its profile's min, opt and max, once each: the concrete
        sizes a static copy is gated and tested at (one set when ``sizes`` names every axis)."""
        free = [a for a in self.profiles if a not in sizes]
        sets = [sizes | {a: getattr(self.profiles[a], which) for a in free} for which in ("min", "opt", "max")]
        return [s for i, s in enumerate(sets) if s not in sets[:i]]


def vision_spec(d: Dims) -> ComponentSpec:
    """One ViT pass → detector FPN features (3 levels) + tracker image embeddings (3 levels).

    Input is the resized RGB image as uint8 NCHW; /255 and mean/std 0.5 normalization run
    inside the graph, so the orchestrator only decodes and resizes.
    """
    s, c, (f0, f1, f2) = d.image_size, d.hidden, d.fpn_sizes
    b = "batch"
    return ComponentSpec(
        name="vision",
        inputs=(TensorSpec("pixel_values", "UINT8", (b, 3, s, s), doc="RGB, resized to image_size, 0..255"),),
        outputs=(
            TensorSpec("fpn_0", "FP32", (b, c, f0, f0), doc="detector FPN level 4g"),
            TensorSpec("fpn_1", "FP32", (b, c, f1, f1), doc="detector FPN level 2g"),
            TensorSpec("fpn_2", "FP32", (b, c, f2, f2), doc="detector FPN level g"),
            TensorSpec("track_0", "FP32", (b, c // 8, f0, f0), doc="tracker high-res feats (conv_s0 applied)"),
            TensorSpec("track_1", "FP32", (b, c // 4, f1, f1), doc="tracker mid-res feats (conv_s1 applied)"),
            TensorSpec("track_2", "FP32", (b, c, f2, f2), doc="tracker image embedding (+no-memory embedding)"),
        ),
        profiles={b: Profile(1, 4, 8)},
        parity_sizes=({b: 1}, {b: 3}),
        batch_axis=b,
        # No static copy at opt (a batch of 4): an image embedded alone or batched with others' images must
        # get the same bits. The dynamic graph does (batch 1, 2, 4 identical); a bf16 static copy did not.
        static_opt=False,
    )


def text_spec(d: Dims) -> ComponentSpec:
    """CLIP text encoder + projection: token ids [B,32] → features [B,32,hidden]."""
    b = "batch"
    return ComponentSpec(
        name="text",
        inputs=(
            TensorSpec("input_ids", "INT64", (b, TEXT_LENGTH), doc="CLIP ids, bos 49406, padded with 49407"),
            TensorSpec("attention_mask", "INT64", (b, TEXT_LENGTH), doc="1 for real tokens, 0 for padding"),
        ),
        outputs=(TensorSpec("text_features", "FP32", (b, TEXT_LENGTH, d.hidden)),),
        profiles={b: Profile(1, 4, 16)},
        parity_sizes=({b: 1}, {b: 3}),
        batch_axis=b,
    )


def concept_spec(d: Dims) -> ComponentSpec:
    """Detector head for N prompts on ONE image's features (features broadcast inside): scores
    and boxes of every query, plus what the mask head needs for the queries that are kept.

    Exemplar boxes are padding-style optional: K ≥ 1 slots, ``box_valid`` False marks a
    padding slot; a row with no valid box runs as text-only (its geometry tokens masked).
    Boxes are cx,cy,w,h normalized to [0,1]; labels 1 positive / 0 negative.
    """
    c, f2, q = d.hidden, d.fpn_sizes[2], d.queries
    n, k = "prompts", "boxes"
    return ComponentSpec(
        name="concept",
        inputs=(
            TensorSpec(
                "fpn_2", "FP32", (1, c, f2, f2), doc="the only FPN level the detector and geometry encoder read"
            ),
            TensorSpec("text_features", "FP32", (n, TEXT_LENGTH, c)),
            TensorSpec("text_mask", "BOOL", (n, TEXT_LENGTH)),
            TensorSpec("boxes", "FP32", (n, k, 4), doc="cxcywh in [0,1]"),
            TensorSpec("box_labels", "INT64", (n, k), doc="1 positive, 0 negative"),
            TensorSpec("box_valid", "BOOL", (n, k), doc="False = padding slot"),
        ),
        outputs=(
            TensorSpec("logits", "FP32", (n, q), doc="per-query class logit"),
            TensorSpec("presence_logits", "FP32", (n, 1)),
            TensorSpec("pred_boxes", "FP32", (n, q, 4), doc="xyxy in [0,1]"),
            TensorSpec("queries", "FP32", (n, q, c), doc="last DETR decoder layer, input of the mask head"),
            TensorSpec(
                "memory",
                "FP32",
                (n, c, f2, f2),
                doc="encoder image tokens after the mask decoder's prompt cross-attention",
            ),
        ),
        profiles={n: Profile(1, 1, 8), k: Profile(1, 1, 8)},
        parity_sizes=({n: 1, k: 1}, {n: 3, k: 2}),
        # One static copy, for one prompt and any number of exemplar boxes: on the cpu target every concept has
        # its own call (the bench model in bf16: 64-72 ms at 1-4 boxes, 85-90 ms dynamic). It passes the bf16
        # gate where the dynamic graph fails it at 3 prompts (then it runs bf16 beside an fp32 dynamic graph).
        static_sizes=({n: 1},),
        static_opt=False,
    )


def mask_spec(d: Dims) -> ComponentSpec:
    """Mask head of the detector, run only for the kept queries of N prompts on ONE image.

    Pixel decoder over (fpn_0, fpn_1, memory) + the query mask embedder; rows of ``queries``
    beyond a prompt's kept count are padding whose masks the orchestrator drops.
    """
    c, (f0, f1, f2), m, q = d.hidden, d.fpn_sizes, d.mask_size, d.queries
    n, k = "prompts", "kept"
    return ComponentSpec(
        name="mask",
        inputs=(
            TensorSpec("fpn_0", "FP32", (1, c, f0, f0)),
            TensorSpec("fpn_1", "FP32", (1, c, f1, f1)),
            TensorSpec("memory", "FP32", (n, c, f2, f2), doc="concept output of the same prompts"),
            TensorSpec("queries", "FP32", (n, k, c), doc="the kept rows of the concept output, zero-padded"),
        ),
        outputs=(TensorSpec("pred_masks", "FP32", (n, k, m, m), doc="mask logits at mask_size"),),
        profiles={n: Profile(1, 1, 8), k: Profile(1, 4, q)},
        parity_sizes=({n: 1, k: 1}, {n: 3, k: 5}),
        # One static copy, for one prompt and any kept count: on the cpu target every concept has its own mask
        # call, whose kept count varies (the bench model in bf16: 27-30 ms at 1-16 kept, 37-41 ms dynamic).
        static_sizes=({n: 1},),
        static_opt=False,
    )


def prompt_spec(d: Dims) -> ComponentSpec:
    """Tracker prompt encoder + mask decoder for P objects on ONE image.

    Points are in pixel coordinates of the resized (image_size) image; labels 1 fg, 0 bg,
    2/3 box corners, -1 padding. ``mask_input`` is one previous low-res mask logit (as in
    transformers, per image), used only when ``has_mask_input`` is 1 (SAM's flag, no branches).
    """
    c, (f0, f1, f2), m = d.hidden, d.fpn_sizes, d.mask_size
    p, k = "objects", "points"
    return ComponentSpec(
        name="prompt",
        inputs=(
            TensorSpec("track_0", "FP32", (1, c // 8, f0, f0)),
            TensorSpec("track_1", "FP32", (1, c // 4, f1, f1)),
            TensorSpec("track_2", "FP32", (1, c, f2, f2)),
            TensorSpec("point_coords", "FP32", (p, k, 2), doc="x,y px in the image_size frame"),
            TensorSpec("point_labels", "INT64", (p, k)),
            TensorSpec("mask_input", "FP32", (1, 1, m, m), doc="previous mask logits (one prompt set)"),
            TensorSpec("has_mask_input", "FP32", (1,)),
        ),
        outputs=(
            TensorSpec("pred_masks", "FP32", (p, 3, m, m), doc="3 candidate mask logits"),
            TensorSpec("iou_scores", "FP32", (p, 3)),
        ),
        profiles={p: Profile(1, 1, 64), k: Profile(1, 2, 16)},
        parity_sizes=({p: 1, k: 1}, {p: 3, k: 4}),
        # Two static copies, one point per object (a click; auto mode's grid) and two (a box), any object count:
        # concurrent requests on one image are merged into one call of several objects, and these copies, like
        # the dynamic graph, give each object the same bits alone or merged (a copy for a fixed object count
        # would not: a result must not depend on what it was batched with). The bench model in bf16: 11-12 ms
        # a click or box against 12-14 dynamic, auto's 16-point call 110 against 140 ms.
        static_sizes=({k: 1}, {k: 2}),
        static_opt=False,
    )


COMPONENT_BUILDERS = {
    "vision": vision_spec,
    "text": text_spec,
    "concept": concept_spec,
    "mask": mask_spec,
    "prompt": prompt_spec,
}
COMPONENTS = tuple(COMPONENT_BUILDERS)


def component_specs(d: Dims, names=COMPONENTS) -> dict[str, ComponentSpec]:
    """{component name: spec} for the given model dims."""
    return {n: COMPONENT_BUILDERS[n](d) for n in names}


# ---- Image features by reference (cpu target). The orchestrator keeps each cached image's vision outputs in
# one slot of a shared-memory arena (triton_repo/sam3/1/arena.py). Instead of sending them as BLS tensors
# (the Python backend copies every one into and out of shared memory), it sends ``features_ref``: the vision
# model writes its outputs into the slot, the heads read theirs from it. A ref is a JSON object
# {"path": file to map, "token": the file's, "offsets": {vision output name: byte offset}}; shapes and dtypes
# are the vision outputs' at batch 1 (the heads' own input shapes).

FEATURES_REF = TensorSpec(
    "features_ref",
    "BYTES",
    (1,),
    optional=True,
    doc='JSON {"path": str, "token": str, "offsets": {name: bytes}} of one image',
)
ARENA_FILE = "sam3-image-arena"  # memfd name of the arena: a model maps no file of another name
ARENA_HEADER = 4096  # bytes before the first slot: the arena's token (ASCII), zero-padded
FEATURES_WRITTEN = TensorSpec("features_written", "INT32", (1,), doc="1: the image's outputs are in its slot")
REFERENCE_INPUTS = {"concept": ("fpn_2",), "mask": ("fpn_0", "fpn_1"), "prompt": ("track_0", "track_1", "track_2")}


def by_reference(spec: ComponentSpec) -> ComponentSpec:
    """``spec`` as the cpu target serves it, features by reference allowed: the vision model takes one
    ``features_ref`` per image (then answers ``features_written`` instead of its outputs); a head takes
    ``features_ref`` in place of its image-feature inputs (REFERENCE_INPUTS, then optional). Other
    components, and the graphs themselves, are unchanged."""
    if spec.name == "vision":
        batch = (spec.batch_axis, 1)
        return replace(
            spec,
            inputs=spec.inputs + (replace(FEATURES_REF, shape=batch),),
            outputs=spec.outputs + (replace(FEATURES_WRITTEN, shape=batch),),
        )
    names = REFERENCE_INPUTS.get(spec.name)
    if names is None:
        return spec
    inputs = tuple(replace(t, optional=True) if t.name in names else t for t in spec.inputs)
    return replace(spec, inputs=inputs + (FEATURES_REF,))


def reference_parameter(spec: ComponentSpec) -> dict:
    """The ``by_reference`` config parameter of a component served by ``by_reference(spec)`` ({} for none):
    {"input": ref input, "output": the vision model's written flag or None, "tensors": the vision outputs
    it writes, or the head inputs it reads, "file": ARENA_FILE, "header": ARENA_HEADER}."""
    arena = {"file": ARENA_FILE, "header": ARENA_HEADER}
    if spec.name == "vision":
        tensors = [t.name for t in spec.outputs]
        return {"input": FEATURES_REF.name, "output": FEATURES_WRITTEN.name, "tensors": tensors} | arena
    if spec.name in REFERENCE_INPUTS:
        return {"input": FEATURES_REF.name, "output": None, "tensors": list(REFERENCE_INPUTS[spec.name])} | arena
    return {}


# ---- The public Triton API of the `sam3` orchestrator: one image per request. Shapes below are per
# request; Triton's dynamic batcher adds a leading batch axis, so a client sends each tensor with a
# leading 1 (e.g. `text` [1, concepts]) and reads each output with a leading 1.


@dataclass(frozen=True)
class Batching:
    """How Triton queues and batches `sam3` requests (written into its config.pbtxt).

    max_batch_size: requests per execute(); max_queue_delay_us: extra wait to fill a batch
    (0: batch only what queued up while the model was busy). max_queue_size / queue_timeout_us:
    Triton's queue policy (refuse at once with UNAVAILABLE beyond that many queued requests, or
    after that long in the queue); None leaves the policy out, and that is the default: any queue
    policy turns off the batcher's prefetching, and Triton's batcher then loses a wake-up now and
    then, stalling a request for its 500 ms default wait (about 1 % of sequential clicks, measured;
    README "Concurrency"). ``sam3-triton serve --queue-size/--queue-timeout-ms`` set them.
    """

    max_batch_size: int = 8
    max_queue_delay_us: int = 0
    max_queue_size: int | None = None
    queue_timeout_us: int | None = None


SAM3_BATCHING = Batching()

# The `sam3` model's config parameters and their defaults (export/repository.py writes overrides;
# the orchestrator reads them; `sam3-triton serve` and the benchmark take their flag defaults here).
ORCHESTRATOR_PARAMETERS = {
    "image_cache_mb": 1024,  # image-embedding cache, MiB (LRU by bytes)
    "text_cache_mb": 64,  # text-feature cache, MiB
    "max_pixels": 40_000_000,  # largest decoded image, H*W (bigger ones: INVALID_ARG)
    "worker_threads": 2,  # the orchestrator's pool: decode, post-processing, encoding
    "features_by_reference": 1,  # cpu target: image features through the shared arena (1) or as BLS tensors (0)
    "detached_requests": 16,  # text/auto requests accepted past execute, unanswered at once (beyond: Triton's queue)
}
ORCHESTRATOR = "sam3"  # the Triton model users call; components are "sam3_<component>"
UNCACHED_IMAGE_ID = "is not in the embedding cache"  # words of the 400 for an image_id sent without its image
MODES = ("text", "point", "box", "auto")
MASK_FORMATS = ("rle", "bool")

SAM3_INPUTS = (
    TensorSpec(
        "image",
        "BYTES",
        (1,),
        optional=True,
        doc="encoded image bytes (JPEG, PNG, WebP, ...); may be left out when image_id is cached",
    ),
    TensorSpec("mode", "BYTES", (1,), optional=True, doc="prompt mode", default="text", choices=MODES),
    TensorSpec("text", "BYTES", ("concepts",), optional=True, doc="one entry per concept (text mode)", default=()),
    TensorSpec("points", "FP32", ("points", 2), optional=True, doc="x,y px in the original image", default=()),
    TensorSpec("point_labels", "INT32", ("points",), optional=True, doc="1 fg, 0 bg", default=()),
    TensorSpec(
        "boxes",
        "FP32",
        ("boxes", 4),
        optional=True,
        default=(),
        doc="x0,y0,x1,y1 px: box prompts (box mode) or exemplar boxes (text mode)",
    ),
    TensorSpec("box_labels", "INT32", ("boxes",), optional=True, doc="exemplar labels 1 / 0 (text mode)", default=()),
    TensorSpec("image_id", "BYTES", (1,), optional=True, doc="client key for the embedding cache", default=""),
    TensorSpec(
        "threshold", "FP32", (1,), optional=True, doc="detection score threshold", default=0.5, bounds=(0.0, 1.0)
    ),
    TensorSpec(
        "mask_threshold",
        "FP32",
        (1,),
        optional=True,
        doc="mask binarization threshold (probability)",
        default=0.5,
        bounds=(0.0, 1.0),
    ),
    TensorSpec("points_per_side", "INT32", (1,), optional=True, doc="auto mode grid", default=16, bounds=(1, 64)),
    TensorSpec("points_per_batch", "INT32", (1,), optional=True, doc="auto mode batch", default=64, bounds=(1, 1024)),
    TensorSpec(
        "pred_iou_thresh",
        "FP32",
        (1,),
        optional=True,
        doc="auto mode predicted-IoU filter",
        default=0.88,
        bounds=(0.0, 1.0),
    ),
    TensorSpec(
        "stability_score_thresh",
        "FP32",
        (1,),
        optional=True,
        doc="auto mode stability filter",
        default=0.95,
        bounds=(0.0, 1.0),
    ),
    TensorSpec(
        "mask_format",
        "BYTES",
        (1,),
        optional=True,
        doc="masks as COCO RLE or dense booleans",
        default="rle",
        choices=MASK_FORMATS,
    ),
)

SAM3_OUTPUTS = (
    TensorSpec("masks_rle", "BYTES", ("detections",), doc="COCO compressed RLE counts, size = image_shape"),
    TensorSpec("masks", "BOOL", ("detections", "height", "width"), doc="only when mask_format=bool, else 0 rows"),
    TensorSpec("boxes", "FP32", ("detections", 4), doc="x1,y1,x2,y2 px"),
    TensorSpec("scores", "FP32", ("detections",), doc="detection score / chosen mask IoU score"),
    TensorSpec("labels", "INT32", ("detections",), doc="concept index (text) or prompt object index"),
    TensorSpec("iou_scores", "FP32", ("detections", "candidates"), doc="all candidate IoU scores (point/box)"),
    TensorSpec("stability_scores", "FP32", ("detections",), doc="auto mode stability score, else 0"),
    TensorSpec("image_shape", "INT32", (2,), doc="original height, width"),
)
