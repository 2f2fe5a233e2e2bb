"""Parity and latency numbers (pure numpy): cosine / max abs diff per output, percentiles."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from export.trt.rules import Tolerance


def parity_metrics(expected: np.ndarray, actual: np.ndarray) -> dict:
    """{"cosine", "max_abs", "mean_abs", "shape_ok"} of two arrays (float64 math).

    Cosine of two all-zero arrays is 1; of a zero and a non-zero array 0. A shape
    mismatch gives cosine 0 and infinite differences.
    """
    a, b = np.asarray(expected, np.float64).ravel(), np.asarray(actual, np.float64).ravel()
    if np.shape(expected) != np.shape(actual):
        return {"cosine": 0.0, "max_abs": float("inf"), "mean_abs": float("inf"), "shape_ok": False}
    if a.size == 0:
        return {"cosine": 1.0, "max_abs": 0.0, "mean_abs": 0.0, "shape_ok": True}
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    cosine = 1.0 if na == nb == 0.0 else (0.0 if na == 0.0 or nb == 0.0 else float(a @ b / (na * nb)))
    d = np.abs(a - b)
    return {"cosine": cosine, "max_abs": float(d.max()), "mean_abs": float(d.mean()), "shape_ok": True}


def parity_row(sizes: dict, output: str, metrics: dict, tol: Tolerance) -> dict:
    """One JSON-ready comparison row with its verdict (see Tolerance)."""
    ok = bool(
        metrics["shape_ok"]
        and np.isfinite(metrics["max_abs"])
        and (metrics["cosine"] >= tol.min_cosine or metrics["max_abs"] <= tol.atol)
    )
    label = ",".join(f"{k}={v}" for k, v in sizes.items())
    return {"sizes": label, "output": output, **metrics, "min_cosine": tol.min_cosine, "atol": tol.atol, "ok": ok}


def latency_summary(seconds: Sequence[float]) -> dict:
    """{"iterations", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "min_ms"} of per-run seconds."""
    ms = np.asarray(seconds, np.float64) * 1e3
    if ms.size == 0:
        raise ValueError("latency_summary needs at least one timing")
    p50, p90, p99 = (float(np.percentile(ms, q)) for q in (50, 90, 99))
    return {
        "iterations": int(ms.size),
        "mean_ms": float(ms.mean()),
        "p50_ms": p50,
        "p90_ms": p90,
        "p99_ms": p99,
        "min_ms": float(ms.min()),
    }
