"""The goals, each a ratio "baseline / ours" (> 1: ours is faster or smaller); latencies in ms.

throughput  point requests at concurrency 1 vs --throughput-concurrency (cold image, warm image, one warm
            image per client)
P1  text (and box) mode: our server vs the reference (median latency ratio)
P2  clicks on one image: embedding cache vs full recomputes (reference; server, cache defeated)
P3  four concepts in one request vs four separate requests (our server)
P4  mask bytes on the wire: COCO RLE vs the seeds' nested-boolean JSON
P5  server overhead: end-to-end latency minus the component models' compute (from the sweep)
"""

from __future__ import annotations

import json

import numpy as np

from bench.progress import log
from bench.stats import Probes, overhead
from bench.sweep import cell, embed_own_images, own_image_request, sweep_request
from bench.timing import latency_stats, repeat_timed, timed
from bench.workloads import P3_WORKLOAD, TEXT_WORKLOADS, Workloads, fresh_id, workload_key

CONCEPT_STAGES = ("sam3_text", "sam3_concept", "sam3_mask")  # the components that run once per concept


def ratio(baseline, ours) -> float | None:
    """baseline / ours (> 1: ours is faster or smaller); None when either is missing or zero."""
    if not baseline or not ours:
        return None
    return round(float(baseline) / float(ours), 3)


def throughput(client, probes: Probes, work: Workloads, args) -> dict:
    """Point requests at concurrency 1 vs ``--throughput-concurrency``, per THROUGHPUT_CASES: cold (a new
    image_id each: the vision model runs, and batches), warm (every client clicks one embedded image:
    their prompts share calls) and warm_per_client (each client clicks its own embedded image: one
    prompt-head call per click). ``--throughput-rounds`` rounds of both loads, which goes first alternating,
    so a machine whose speed drifts hits both alike: medians of the rates and of the per-round gains."""
    high, cases = args.throughput_concurrency, {}
    for case in THROUGHPUT_CASES:
        log(f"throughput: point, {case}, concurrency 1 vs {high}, {args.throughput_rounds} round(s)")
        rounds = [
            _throughput_round(client, probes, work, case, high, args.repeats, r) for r in range(args.throughput_rounds)
        ]
        cases[case] = _throughput_summary(rounds, high)
    return cases


def _throughput_round(client, probes: Probes, work: Workloads, case: str, high: int, repeats: int, r: int) -> dict:
    """{concurrency: cell row} of one round: concurrency 1 first in even rounds, ``high`` first in odd ones."""
    order = (1, high) if r % 2 == 0 else (high, 1)
    return {c: _throughput_cell(client, probes, work, case, c, repeats * max(1, high // c)) for c in order}


def _throughput_summary(rounds: list[dict], high: int) -> dict:
    """One case's rates ([concurrency 1, high], medians over rounds), the median per-round gain, every round's
    rates, requests per execution (medians) and errors (summed)."""
    rps = [[row[c]["throughput_rps"] for row in rounds] for c in (1, high)]
    gains = [ratio(fast, slow) for slow, fast in zip(*rps)]
    return {
        "concurrency": [1, high],
        "rps": [round(float(np.median(r)), 3) for r in rps],
        "gain": None if None in gains else round(float(np.median(gains)), 3),
        "rounds": [list(pair) for pair in zip(*rps)],
        "vision_batch": [_median_or_none([row[c]["vision_batch"] for row in rounds]) for c in (1, high)],
        "sam3_batch": [_median_or_none([row[c]["sam3_batch"] for row in rounds]) for c in (1, high)],
        "cpu_busy": [_median_or_none([row[c]["cpu_busy"] for row in rounds]) for c in (1, high)],
        "errors": sum(row[c]["errors"] for row in rounds for c in (1, high)),
    }


def _median_or_none(values: list) -> float | None:
    """The median of ``values``; None when any is None (the model never ran)."""
    return None if None in values else round(float(np.median(values)), 3)


THROUGHPUT_CASES = ("cold", "warm", "warm_per_client")


def _throughput_cell(client, probes: Probes, work: Workloads, case: str, concurrency: int, per_client: int) -> dict:
    """One throughput load of ``case``; the images it clicks are embedded before the clock starts."""
    if case == "warm_per_client":
        request = own_image_request(work, "point", per_client)
        embed_own_images(work, "point", request, client, concurrency, per_client)
    else:
        request = sweep_request(work, "point", case)
        request(client, 0)
    return cell(client, probes, request, concurrency, per_client)[0]


def p1_text(client, work: Workloads, reference, repeats: int) -> dict:
    """Text mode, one concept per request, alternating the two photos: server (cold and warm
    image cache) vs the reference; also the detection counts of both (they should agree)."""
    log(f"P1 text: server cold/warm and reference, {2 * repeats} requests each")
    cold = repeat_timed(lambda i: work.call(client, "text", i, fresh_id(work.image_of("text", i))), 2 * repeats)
    warm = repeat_timed(lambda i: work.call(client, "text", i, f"p1-{work.image_of('text', i)}"), 2 * repeats)
    result = {
        "server_cold": latency_stats(cold),
        "server_warm": latency_stats(warm),
        "workloads": [workload_key(n, c) for n, c in TEXT_WORKLOADS],
        "detections": _p1_detections(client, work, reference),
    }
    if reference is None:
        return {**result, "reference": None, "speedup": None, "speedup_warm": None}
    ref = repeat_timed(lambda i: reference_text(reference, work, i), 2 * repeats)
    return {
        **result,
        "reference": latency_stats(ref),
        "speedup": ratio(np.median(ref), np.median(cold)),
        "speedup_warm": ratio(np.median(ref), np.median(warm)),
    }


def p1_box(client, work: Workloads, reference, repeats: int) -> dict:
    """Box mode on a never-seen image (a new image_id each time) vs the reference's box request."""
    log(f"P1 box: server cold and reference, {repeats} requests each")
    image = work.images["astronaut"].data
    cold = repeat_timed(lambda i: work.call(client, "box", i, fresh_id("astronaut")), repeats)
    result = {"server_cold": latency_stats(cold)}
    if reference is None:
        return {**result, "reference": None, "speedup": None}
    ref = repeat_timed(lambda _: reference.box(image, work.box), repeats)
    return {**result, "reference": latency_stats(ref), "speedup": ratio(np.median(ref), np.median(cold))}


def reference_text(reference, work: Workloads, i: int):
    """The reference's answer to text request ``i`` (the same workload and threshold as the server's)."""
    name, concepts = TEXT_WORKLOADS[i % len(TEXT_WORKLOADS)]
    return reference.text(
        work.images[name].data, list(concepts), threshold=work.thresholds[workload_key(name, concepts)]
    )


def _p1_detections(client, work: Workloads, reference) -> dict:
    """{workload: {"server": n, "reference": n}} for one request of each text workload."""
    counts = {}
    for i, (name, concepts) in enumerate(TEXT_WORKLOADS):
        entry = {"server": len(work.call(client, "text", i, fresh_id(name)))}
        if reference is not None:
            entry["reference"] = int(len(reference_text(reference, work, i)[1]))
        counts[workload_key(name, concepts)] = entry
    return counts


def session_times(sessions: int, session, shared_id: str | None = None) -> list[float]:
    """Seconds of ``sessions`` calls session(image_id_of); image_id_of() gives one new id per
    session when ``shared_id`` names a photo, else a new id per call (the cache defeated)."""
    times = []
    for _ in range(sessions):
        sid = fresh_id(shared_id) if shared_id else None
        times.append(timed(session, (lambda: sid) if sid else (lambda: fresh_id("nocache")))[0])
    return times


def p2_clicks(client, work: Workloads, reference, sessions: int) -> dict:
    """``clicks`` different clicks on one image: server with its embedding cache (one new image_id
    per session) vs the server with the cache defeated (a new image_id per click) vs the
    reference (recomputes the image on every click, like the seeds). Times are per session."""
    clicks, image = work.clicks, work.images["astronaut"].data
    log(f"P2 {len(clicks)} clicks: {sessions} session(s) each of cached / no cache / reference")

    def session(image_id_of):
        return [client.points(image, [c], [1], image_id=image_id_of()) for c in clicks]

    cached = session_times(sessions, session, shared_id="astronaut")
    defeated = session_times(sessions, session)
    result = {
        "clicks": len(clicks),
        "server_cached": latency_stats(cached),
        "server_no_cache": latency_stats(defeated),
        "speedup_vs_no_cache": ratio(np.median(defeated), np.median(cached)),
    }
    if reference is None:
        return {**result, "reference": None, "speedup": None}
    ref = repeat_timed(lambda _: [reference.point(image, [c], [1]) for c in clicks], sessions)
    return {**result, "reference": latency_stats(ref), "speedup": ratio(np.median(ref), np.median(cached))}


def p3_concepts(client, work: Workloads, repeats: int, probes: Probes) -> dict:
    """Four concepts in one request vs four separate requests (each with a new image_id, i.e. the
    image recomputed as in the seeds' one-text-per-request contract; and sharing one image_id).

    ``serial_stage_speedup``: four separate requests against one request whose every extra concept
    costs its component compute (text, concept and mask inference, from Triton's statistics:
    ``stage_ms_per_concept``) run one stage after another, and no orchestrator time. It was the ceiling
    while a request's concepts went through the stages in one call each; the cpu target now runs one
    concept's mask head while the next concept's detector runs, which can beat it.
    """
    name, concepts = P3_WORKLOAD
    key = workload_key(name, concepts)
    n = len(concepts)
    log(f"P3 {n} concepts: one request vs {n} separate, {repeats} each")

    def separate(image_id_of):
        return [
            client.text(work.images[name].data, [c], threshold=work.thresholds[key], image_id=image_id_of())
            for c in concepts
        ]

    one, one_ms = _with_stage_compute(
        probes, lambda: repeat_timed(lambda _: work.text(client, name, concepts, fresh_id(name)), repeats)
    )
    single, single_ms = _with_stage_compute(
        probes, lambda: repeat_timed(lambda _: work.text(client, name, concepts[:1], fresh_id(name)), repeats)
    )
    apart, shared = session_times(repeats, separate), session_times(repeats, separate, shared_id=name)
    extra = (np.median(one) - np.median(single)) / (n - 1)
    stage = (one_ms - single_ms) / (n - 1)
    return {
        "concepts": list(concepts),
        "threshold": work.thresholds[key],
        "one_request": latency_stats(one),
        "single_concept_request": latency_stats(single),
        "separate_requests": latency_stats(apart),
        "separate_requests_shared_image_id": latency_stats(shared),
        "extra_concept_ms": round(float(extra) * 1e3, 3),
        "extra_concept_fraction": round(float(extra / np.median(single)), 4),
        "speedup": ratio(np.median(apart), np.median(one)),
        "speedup_vs_shared_image_id": ratio(np.median(shared), np.median(one)),
        "stage_ms_per_concept": round(stage, 3),
        "serial_stage_speedup": ratio(np.median(apart), np.median(single) + (n - 1) * stage / 1e3),
    }


def _with_stage_compute(probes: Probes, timed) -> tuple:
    """(``timed()``'s latencies, mean per-concept-stage compute per sam3 request in ms): the
    inference time of sam3_text, sam3_concept and sam3_mask, from Triton's statistics."""
    before = probes.stats.settled()
    latencies = timed()
    delta = probes.stats.since(before, len(latencies))
    ns = sum(delta.get(m, {}).get("compute_infer", (0, 0))[1] for m in CONCEPT_STAGES)
    return latencies, ns / len(latencies) / 1e6


def p4_mask_bytes(client, work: Workloads, modes) -> dict:
    """Mask bytes per response: COCO RLE (ours) vs the seeds' JSON of nested booleans
    (``json.dumps(mask.tolist())``; ``compact``: with separators (",", ":") as FastAPI sends it)."""
    log("P4 mask bytes: RLE vs nested-boolean JSON")
    cases = [
        (f"text {workload_key(n, c)}", lambda n=n, c=c: work.text(client, n, c, fresh_id(n)))
        for n, c in TEXT_WORKLOADS + (P3_WORKLOAD,)
        if "text" in modes
    ]
    cases += [(m, lambda m=m: work.call(client, m, 0, fresh_id(work.image_of(m, 0)))) for m in modes if m != "text"]
    rows = [{"case": label, **_mask_bytes(fn())} for label, fn in cases]
    totals = {k: sum(r[k] for r in rows) for k in ("masks", "rle_bytes", "json_bytes", "json_compact_bytes")}
    return {
        "cases": rows,
        "total": totals,
        "reduction": ratio(totals["json_bytes"], totals["rle_bytes"]),
        "reduction_compact": ratio(totals["json_compact_bytes"], totals["rle_bytes"]),
    }


def _mask_bytes(seg) -> dict:
    """RLE bytes of a Segmentation's masks vs the seeds' JSON of the same masks (point/box: one 2-D mask)."""
    masks = seg.masks
    nested = masks[0].tolist() if seg.mode in ("point", "box") and len(masks) == 1 else masks.tolist()
    return {
        "masks": int(len(seg)),
        "image_shape": list(seg.image_shape),
        "rle_bytes": int(sum(len(c) for c in seg.masks_rle)),
        "json_bytes": len(json.dumps(nested)),
        "json_compact_bytes": len(json.dumps(nested, separators=(",", ":"))),
    }


def p5_per_mask(client, work: Workloads, probes: Probes, repeats: int) -> dict:
    """P5's cost per extra mask: one concept on an embedded image (no decode, no vision call) at the
    workload's threshold (few masks) and at threshold 0 (every query kept), ``repeats`` requests each at
    concurrency 1. ``per_extra_mask_ms``: the difference of the overheads (end-to-end − component compute,
    so the mask head's own compute is left out) over the difference of the masks returned."""
    name, concepts = TEXT_WORKLOADS[0]
    image, image_id = work.images[name].data, f"bench-{name}"
    rows = {}
    for label, threshold in (("few", work.thresholds[workload_key(name, concepts)]), ("many", 0.0)):

        def request(c, i, t=threshold):
            return c.text(image, list(concepts), threshold=t, image_id=image_id)

        request(client, 0)  # embeds the image; warms this threshold's path
        _, load, delta, phases = cell(client, probes, request, 1, repeats, f"text at threshold {threshold:g}")
        rows[label] = {
            "threshold": threshold,
            "masks": float(np.mean(load.detections)),
            **overhead(delta, load.latencies, phases),
        }
    extra = rows["many"]["masks"] - rows["few"]["masks"]
    measured = extra > 0 and all(r.get("requests") for r in rows.values())
    per = (rows["many"]["overhead_ms"] - rows["few"]["overhead_ms"]) / extra if measured else None
    return {**rows, "per_extra_mask_ms": round(per, 3) if per is not None else None}


def p5_summary(rows: list) -> dict:
    """P5: per protocol and mode at the lowest concurrency: overhead = end-to-end − component compute.
    The medians are of the sweep's own rows (its --cache); ``rows`` also holds the embedded-image rows."""
    cache = rows[0].get("cache") if rows else None
    valid = [r for r in rows if r.get("requests") and r.get("cache") == cache]
    fractions = [r["overhead_fraction"] for r in valid]
    return {
        "rows": rows,
        "median_overhead_ms": round(float(np.median([r["overhead_ms"] for r in valid])), 3) if valid else None,
        "median_overhead_fraction": round(float(np.median(fractions)), 4) if valid else None,
    }
