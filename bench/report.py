"""The report on stdout: the sweep table (latencies in ms, requests/s, requests per execution)
and one or two lines per goal, ratios as baseline / ours."""

from __future__ import annotations


def format_table(report: dict) -> str:
    """The sweep table and the P1–P5 lines, for stdout."""
    head = (
        f"{'protocol':8} {'mode':6} {'conc':>4} {'n':>4} {'err':>3} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} "
        f"{'req/s':>7} {'sam3/ex':>7} {'vis/ex':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in report["sweep"]:
        lines.append(
            f"{r['protocol']:8} {r['mode']:6} {r['concurrency']:>4} {r.get('count', 0):>4} {r['errors']:>3} "
            f"{_ms(r.get('p50_ms'))} {_ms(r.get('p90_ms'))} {_ms(r.get('p99_ms'))} {r['throughput_rps']:>7.2f} "
            f"{_n(r.get('sam3_batch')):>7} {_n(r.get('vision_batch')):>6}"
        )
    return "\n".join(lines + [""] + goal_lines(report["comparisons"]) + bf16_lines(report["comparisons"]))


def _n(value) -> str:
    """Requests per execution, 2 decimals ("-" when unknown)."""
    return f"{value:.2f}" if value is not None else "-"


def _ms(value) -> str:
    """Milliseconds right-aligned in 9 columns, 1 decimal ("-" when unknown)."""
    return f"{value:>9.1f}" if value is not None else f"{'-':>9}"


def _x(value) -> str:
    """A ratio as "1.23x" ("n/a" when unknown)."""
    return f"{value:.2f}x" if value is not None else "n/a"


def _p50(stats) -> str:
    """The median of latency_stats in ms ("n/a" when nothing was timed)."""
    return f"{stats['p50_ms']:.1f} ms" if stats and stats.get("count") else "n/a"


def goal_lines(c: dict) -> list[str]:
    """One or two lines per goal, ratios as baseline / ours."""
    return (
        _p1_lines(c.get("P1"))
        + _p1_box_lines(c.get("P1box"))
        + _p2_lines(c.get("P2"))
        + _p3_lines(c.get("P3"))
        + _p4_lines(c.get("P4"))
        + _p5_lines(c.get("P5"))
        + _throughput_lines(c.get("throughput"))
    )


def _p1_lines(p1: dict | None) -> list[str]:
    """P1 text: server cold and cached vs the reference."""
    if not p1:
        return []
    return [
        f"P1 text vs reference: server {_p50(p1['server_cold'])} (cold image), {_p50(p1['server_warm'])} "
        f"(cached), reference {_p50(p1['reference'])} → speedup {_x(p1['speedup'])} "
        f"(cached {_x(p1['speedup_warm'])})"
    ]


def _p1_box_lines(box: dict | None) -> list[str]:
    """P1 box: server on a cold image vs the reference."""
    if not box:
        return []
    return [
        f"P1 box vs reference: server {_p50(box['server_cold'])} (cold image), reference "
        f"{_p50(box['reference'])} → speedup {_x(box['speedup'])}"
    ]


def _p2_lines(p2: dict | None) -> list[str]:
    """P2 clicks: cached server vs the reference and vs the server without its cache."""
    if not p2:
        return []
    return [
        f"P2 {p2['clicks']} clicks: cached {_p50(p2['server_cached'])}, reference {_p50(p2['reference'])} → "
        f"speedup {_x(p2['speedup'])}; server without cache {_p50(p2['server_no_cache'])} → "
        f"{_x(p2['speedup_vs_no_cache'])}"
    ]


def _p3_lines(p3: dict | None) -> list[str]:
    """P3 concepts: one request vs separate ones, and the cost of each extra concept."""
    if not p3:
        return []
    return [
        f"P3 {len(p3['concepts'])} concepts: one request {_p50(p3['one_request'])}, separate "
        f"{_p50(p3['separate_requests'])} → speedup {_x(p3['speedup'])}, at serial stage compute "
        f"{_x(p3['serial_stage_speedup'])} (per-concept stages {p3['stage_ms_per_concept']:.1f} ms each) "
        "(separate, shared image_id: "
        f"{_p50(p3['separate_requests_shared_image_id'])} → {_x(p3['speedup_vs_shared_image_id'])}); "
        f"each extra concept {p3['extra_concept_ms']:.1f} ms = "
        f"{100 * p3['extra_concept_fraction']:.0f}% of a one-concept request "
        f"({_p50(p3['single_concept_request'])})"
    ]


def _p4_lines(p4: dict | None) -> list[str]:
    """P4 mask bytes: RLE vs the nested-boolean JSON (indented and compact)."""
    if not p4:
        return []
    t = p4["total"]
    return [
        f"P4 mask bytes ({t['masks']} masks): RLE {t['rle_bytes']:,} B vs JSON {t['json_bytes']:,} B → "
        f"{_x(p4['reduction'])} smaller (compact JSON {t['json_compact_bytes']:,} B → "
        f"{_x(p4['reduction_compact'])})"
    ]


def _p5_lines(p5: dict | None) -> list[str]:
    """P5 overhead per protocol and mode (ms), then each row's phase breakdown (ms)."""
    if not p5:
        return []
    lines = ["P5 overhead (end-to-end − component compute, lowest concurrency; cold: a new image, cached: embedded):"]
    lines += [
        f"   {r['protocol']:5} {r['mode']:6} {_cache(r)} e2e {r['end_to_end_ms']:.1f} ms, components "
        f"{r['components_compute_ms']:.1f} ms, orchestrator {r['orchestrator_overhead_ms']:.1f} ms, "
        f"transport {r['transport_ms']:.1f} ms → overhead {r['overhead_ms']:.1f} ms "
        f"({100 * r['overhead_fraction']:.1f}%)"
        + ("" if r["consistent"] else " [other requests in stats]")
        + (
            f" [component calls overlapped: {r['critical_compute_ms']:.1f} ms on the request's path, the orchestrator's wait]"
            if r.get("overlapped")
            else ""
        )
        for r in p5["rows"]
        if r.get("requests")
    ]
    lines += [
        f"   {r['protocol']:5} {r['mode']:6} {_cache(r)} breakdown ms: "
        + ", ".join(f"{k} {v:.1f}" for k, v in r["breakdown"].items())
        + _floor_text(r.get("floor"))
        for r in p5["rows"]
        if r.get("breakdown")
    ]
    return lines + _per_mask_lines(p5.get("per_mask"))


def _per_mask_lines(per_mask: dict | None) -> list[str]:
    """P5's per-extra-mask line: the overheads of few and many masks and their slope."""
    if not per_mask or per_mask["per_extra_mask_ms"] is None:
        return []
    few, many = per_mask["few"], per_mask["many"]
    return [
        f"P5 per extra mask (one concept, embedded image): {few['masks']:.1f} masks → overhead "
        f"{few['overhead_ms']:.1f} ms, {many['masks']:.1f} masks (threshold 0) → {many['overhead_ms']:.1f} ms: "
        f"{per_mask['per_extra_mask_ms']:.3f} ms per extra mask"
    ]


def _cache(row: dict) -> str:
    """ "cold" (a new image per request) or "cached" (an embedded image), padded to one width."""
    return f"{'cached' if row.get('cache') == 'warm' else 'cold':6}"


def _floor_text(floor: dict | None) -> str:
    """ "; overhead = X× the BLS copies (Y× without decode)" where copy time was measured."""
    if not floor:
        return ""
    return f"; overhead = {floor['overhead_x']:.1f}× the BLS copies ({floor['without_decode_x']:.1f}× without decode)"


def _throughput_lines(rates: dict | None) -> list[str]:
    """Throughput (requests/s) at concurrency 1 vs high, per image cache state."""
    return [
        f"throughput point {cache}: {t['rps'][0]:.2f} → {t['rps'][1]:.2f} req/s at concurrency "
        f"{t['concurrency'][0]} → {t['concurrency'][1]} ({_x(t['gain'])}, median of {len(t['rounds'])} "
        f"round(s)); requests per execution "
        f"sam3 {_n(t['sam3_batch'][1])}, vision {_n(t['vision_batch'][1])}; errors {t['errors']}" + _busy(t)
        for cache, t in (rates or {}).items()
    ]


def _busy(t: dict) -> str:
    """ "; this machine's CPU busy a % → b %" of a throughput case, where both loads measured it."""
    low, high = t.get("cpu_busy") or (None, None)
    if low is None or high is None:
        return ""
    return f"; this machine's CPU busy {100 * low:.0f} % → {100 * high:.0f} %"


def bf16_lines(c: dict) -> list[str]:
    """P1/P2 against the bf16-autocast reference (P3 compares our server with itself: no reference)."""
    p1, p2 = c.get("P1") or {}, c.get("P2") or {}
    lines = []
    if p1.get("reference_bf16"):
        lines += [
            f"P1 text vs reference bf16 autocast {_p50(p1['reference_bf16'])} → speedup {_x(p1['speedup_bf16'])} "
            f"(cached {_x(p1['speedup_warm_bf16'])})"
        ]
    if (c.get("P1box") or {}).get("reference_bf16"):
        lines += [
            f"P1 box vs reference bf16 autocast {_p50(c['P1box']['reference_bf16'])} → speedup "
            f"{_x(c['P1box']['speedup_bf16'])}"
        ]
    if p2.get("reference_bf16"):
        lines += [
            f"P2 {p2['clicks']} clicks vs reference bf16 autocast {_p50(p2['reference_bf16'])} → "
            f"speedup {_x(p2['speedup_bf16'])}"
        ]
    return lines
