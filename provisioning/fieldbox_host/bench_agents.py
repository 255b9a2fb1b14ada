"""Benchmark section "runner": what the agent runner adds around a bare TFLite invoke.

Model and data: BlazeFace short-range (``face_detection_short_range.tflite``)
through the shipped ``face-detector`` manifest, on ``astronaut.png``,
preprocessed once, 1 thread.

* **baseline** — the bare loop one would write by hand on the *same*
  interpreter object: ``set_tensor(input); invoke(); get_tensor(regressors);
  get_tensor(classificators)``.
* **ours** — :meth:`fieldbox.agents.Agent.infer`, the timed inference step of
  ``Agent.run``: the same set/invoke/get plus the lock that serialises the
  interpreter, the per-input/per-output loops and recording the latency in the
  ring buffer.

"Runner overhead" is ``p50(ours) / p50(baseline) - 1``, target <= 3 %. Both are
timed from outside with the same clock, one call each, alternating (A B, then
B A, ...) so drift and cache effects fall on both equally. The median of the
per-pair differences is shown as an absolute figure too.

Shown without a target: the whole ``Agent.run`` (PNG decode, letterbox,
normalisation, inference, anchor decoding, weighted NMS, mapping back), which
is what an item costs end to end.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt

from fieldbox.agents import Agent, load_agent
from fieldbox_host import assets
from fieldbox_host.bench import Row, Skip

SECTION = "runner"
PAIRS = 3000
WARMUP = 200
FULL_RUNS = 200
TARGET_PCT = 3.0
ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "rootfs-overlay" / "etc" / "fieldbox" / "agents" / "face-detector.toml"


def _load(asset_dir: Path) -> Agent:
    previous = os.environ.get("FIELDBOX_MODELS")
    os.environ["FIELDBOX_MODELS"] = str(asset_dir)
    try:
        return load_agent(MANIFEST)
    finally:
        if previous is None:
            del os.environ["FIELDBOX_MODELS"]
        else:
            os.environ["FIELDBOX_MODELS"] = previous


def measure(agent: Agent, image: bytes, pairs: int = PAIRS) -> dict[str, npt.NDArray[np.float64]]:
    """Per-call seconds for the bare loop, the runner's inference step, and whole runs."""
    inputs = agent.prepare(image).inputs
    raw = agent.interpreter.raw
    in_index = agent.interpreter.input_details()[0].index
    out_indices = [d.index for d in agent.interpreter.output_details()]
    x = inputs[0]
    clock = time.perf_counter

    def bare() -> float:
        t0 = clock()
        raw.set_tensor(in_index, x)
        raw.invoke()
        for i in out_indices:
            raw.get_tensor(i)
        return clock() - t0

    def ours() -> float:
        t0 = clock()
        agent.infer(inputs)
        return clock() - t0

    for _ in range(WARMUP):
        bare()
        ours()
    base = np.empty(pairs)
    mine = np.empty(pairs)
    for i in range(pairs):
        if i % 2:
            base[i] = bare()
            mine[i] = ours()
        else:
            mine[i] = ours()
            base[i] = bare()
    full = np.empty(FULL_RUNS)
    for i in range(FULL_RUNS):
        t0 = clock()
        agent.run(image)
        full[i] = clock() - t0
    return {"bare": base, "runner": mine, "full": full}


def bench() -> list[Row]:
    """The ``runner`` section's rows."""
    asset_dir = ROOT / "build" / "assets"
    try:
        assets.fetch("face_detection_short_range.tflite", asset_dir)
        image = assets.fetch("astronaut.png", asset_dir).read_bytes()
    except assets.AssetError as exc:
        raise Skip(f"assets unavailable: {exc}") from None
    agent = _load(asset_dir)
    t = measure(agent, image)
    bare50, ours50 = (float(np.percentile(t[k], 50)) * 1000 for k in ("bare", "runner"))
    bare95, ours95 = (float(np.percentile(t[k], 95)) * 1000 for k in ("bare", "runner"))
    overhead = (ours50 / bare50 - 1.0) * 100.0
    paired_us = float(np.median(t["runner"] - t["bare"])) * 1e6
    full50 = float(np.percentile(t["full"], 50)) * 1000
    full95 = float(np.percentile(t["full"], 95)) * 1000
    n = len(t["bare"])
    return [
        Row(
            SECTION,
            f"face detector inference step p50 ({n} interleaved pairs, 1 thread)",
            ours50,
            "ms",
            baseline=bare50,
            baseline_name="bare set/invoke/get loop",
        ),
        Row(
            SECTION,
            "runner overhead at p50",
            overhead,
            "%",
            target=f"<= {TARGET_PCT:g} %",
            met=overhead <= TARGET_PCT,
            note=f"median paired difference {paired_us:+.1f} µs per call",
        ),
        Row(
            SECTION,
            "face detector inference step p95",
            ours95,
            "ms",
            baseline=bare95,
            baseline_name="bare loop p95",
        ),
        Row(
            SECTION,
            "whole agent.run p50 (PNG decode, letterbox, inference, decode + NMS)",
            full50,
            "ms",
            baseline=bare50,
            baseline_name="bare invoke",
            note=f"p95 {full95:.2f} ms; informational",
        ),
    ]
