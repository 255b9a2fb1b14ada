"""``fieldbox agent ...``: run, benchmark and check agents declared in manifests.

    fieldbox agent run MANIFEST INPUT [--json | --table]
    fieldbox agent bench MANIFEST [--input FILE] [--warmup N] [--runs N] [--threads N] [--json]
    fieldbox agent check MANIFEST [--json]
    fieldbox agent schema

numpy and the TFLite runtime are imported inside the handlers, so
``fieldbox --help`` stays fast on a small device.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from fieldbox.errors import InputError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``agent`` verb and its sub-verbs."""
    parser = subparsers.add_parser(
        "agent",
        help="run, benchmark and check agents (TFLite models declared in manifests)",
        description="Run, benchmark and check agents declared in manifest files (TOML or JSON).",
    )
    sub = parser.add_subparsers(dest="agent_verb", metavar="SUBVERB", required=True)

    run = sub.add_parser("run", help="one inference on one input file; prints the result")
    run.add_argument("manifest", type=Path, help="agent manifest (.toml or .json)")
    run.add_argument("input", help="input file (image, UTF-8 text or .npy/.npz); '-' reads stdin")
    fmt = run.add_mutually_exclusive_group()
    fmt.add_argument("--json", dest="format", action="store_const", const="json", help="JSON (default)")
    fmt.add_argument("--table", dest="format", action="store_const", const="table", help="a readable table")
    run.set_defaults(func=_run, format="json")

    bench = sub.add_parser(
        "bench", help="benchmark like TFLite's benchmark_model: init, warm-up, runs, percentiles, memory"
    )
    bench.add_argument("manifest", type=Path, help="agent manifest (.toml or .json)")
    bench.add_argument("--input", type=Path, help="input file; also times the whole run (decode, pre/post)")
    bench.add_argument("--warmup", type=_count, default=5, help="warm-up inferences, not timed (default 5)")
    bench.add_argument("--runs", type=_positive, default=100, help="timed inferences (default 100)")
    bench.add_argument("--threads", type=_positive, help="override the manifest's thread count")
    bench.add_argument("--json", action="store_true", help="print JSON instead of a table")
    bench.set_defaults(func=_bench)

    check = sub.add_parser("check", help="validate a manifest, its model's sha256 and that the model fits")
    check.add_argument("manifest", type=Path, help="agent manifest (.toml or .json)")
    check.add_argument("--json", action="store_true", help="print JSON instead of text")
    check.set_defaults(func=_check)

    schema = sub.add_parser("schema", help="print every manifest key with its type, default and meaning")
    schema.set_defaults(func=_schema)

    status = sub.add_parser(
        "status",
        help="ask the running runner program which agents it serves, with latency and memory; "
        "exit 1 if any manifest failed to load",
    )
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.set_defaults(func=_status)


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _read_input(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    path = Path(name)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such input file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None


def _run(args: argparse.Namespace) -> int:
    from fieldbox.agents import load_agent

    agent = load_agent(args.manifest)
    data = _read_input(args.input)
    try:
        result = agent.run(data)
    except InputError as exc:
        raise InputError(f"{args.input}: {exc.message}", exc.hint) from None
    if args.format == "table":
        print(format_result(agent.kind, result))
    else:
        print(json.dumps(result, indent=2))
    return 0


def format_result(kind: str, result: dict[str, Any]) -> str:
    """A human-readable rendering of one result."""
    lines: list[str] = []
    if "detections" in result:
        dets = result["detections"]
        lines.append(f"{len(dets)} detection(s)")
        if dets:
            lines.append(f"{'score':>7}  {'xmin':>7} {'ymin':>7} {'xmax':>7} {'ymax':>7}")
            for d in dets:
                b = d["box"]
                lines.append(
                    f"{d['score']:7.3f}  {b['xmin']:7.1f} {b['ymin']:7.1f} {b['xmax']:7.1f} {b['ymax']:7.1f}"
                )
    elif "top_k" in result:
        lines.append(f"label: {result.get('label')}  (score {result.get('score')})")
        lines.append(f"{'rank':>4}  {'score':>9}  label")
        for rank, item in enumerate(result["top_k"], 1):
            lines.append(f"{rank:4d}  {item['score']:9.5f}  {item['label']}")
    elif "outputs" in result:
        for out in result["outputs"]:
            lines.append(f"{out['name']}: shape {out['shape']} dtype {out['dtype']}")
    else:
        lines.extend(f"{k}: {v}" for k, v in result.items() if k != "latency_ms")
    lines.append(f"latency: {result['latency_ms']:.2f} ms ({kind})")
    return "\n".join(lines)


def _bench(args: argparse.Namespace) -> int:
    import numpy as np

    from fieldbox.agents.latency import peak_rss_bytes, rss_bytes
    from fieldbox.agents.manifest import load_manifest, replace_manifest
    from fieldbox.agents.runner import agent_from_manifest

    rss_before = rss_bytes()
    manifest = load_manifest(args.manifest)
    if args.threads:
        manifest = replace_manifest(manifest, threads=args.threads)
    manifest = replace_manifest(manifest, warmup=0)  # warm-up is timed separately below
    start = time.perf_counter()
    agent = agent_from_manifest(manifest)
    init_ms = (time.perf_counter() - start) * 1000.0
    rss_loaded = rss_bytes()

    data = _read_input(str(args.input)) if args.input else None
    inputs = agent.synthetic_inputs() if data is None else agent.prepare(data).inputs
    warm: list[float] = []
    for _ in range(args.warmup):
        t0 = time.perf_counter()
        agent.infer(inputs)
        warm.append((time.perf_counter() - t0) * 1000.0)
    timings = np.empty(args.runs)
    for i in range(args.runs):
        t0 = time.perf_counter()
        agent.infer(inputs)
        timings[i] = (time.perf_counter() - t0) * 1000.0
    full = None
    if data is not None:
        full_t = np.empty(args.runs)
        for i in range(args.runs):
            t0 = time.perf_counter()
            agent.run(data)
            full_t[i] = (time.perf_counter() - t0) * 1000.0
        full = _summary(full_t)
    report = {
        "agent": agent.name,
        "model": str(agent.model_path),
        "runtime": agent.interpreter.runtime,
        "threads": agent.interpreter.threads,
        "input": str(args.input) if args.input else "synthetic",
        "init_ms": round(init_ms, 3),
        "warmup": {
            "runs": args.warmup,
            "first_ms": round(warm[0], 3) if warm else None,
            "mean_ms": round(float(np.mean(warm)), 3) if warm else None,
        },
        "inference": _summary(timings),
        "run": full,
        "memory": {
            "rss_before_load_bytes": rss_before,
            "rss_after_load_bytes": rss_loaded,
            "rss_now_bytes": rss_bytes(),
            "peak_rss_bytes": peak_rss_bytes(),
        },
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_bench_table(report))
    return 0


def _summary(ms: Any) -> dict[str, Any]:
    import numpy as np

    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    mean = float(np.mean(ms))
    return {
        "runs": len(ms),
        "min_ms": round(float(np.min(ms)), 4),
        "mean_ms": round(mean, 4),
        "p50_ms": round(float(p50), 4),
        "p95_ms": round(float(p95), 4),
        "p99_ms": round(float(p99), 4),
        "max_ms": round(float(np.max(ms)), 4),
        "std_ms": round(float(np.std(ms)), 4),
        "throughput_per_s": round(1000.0 / mean, 2) if mean > 0 else None,
    }


def _mib(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**20:.1f} MiB"


def _bench_table(r: dict[str, Any]) -> str:
    inf = r["inference"]
    lines = [
        f"agent          {r['agent']}  ({r['runtime']}, {r['threads']} thread(s))",
        f"model          {r['model']}",
        f"input          {r['input']}",
        f"init           {r['init_ms']:.2f} ms (manifest, sha256, load, allocate)",
    ]
    w = r["warmup"]
    if w["runs"]:
        lines.append(
            f"warm-up        {w['runs']} runs, first {w['first_ms']:.3f} ms, mean {w['mean_ms']:.3f} ms"
        )
    lines.append(
        f"inference      {inf['runs']} runs: p50 {inf['p50_ms']:.3f}  p95 {inf['p95_ms']:.3f}  "
        f"p99 {inf['p99_ms']:.3f}  mean {inf['mean_ms']:.3f}  min {inf['min_ms']:.3f} ms; "
        f"{inf['throughput_per_s']}/s"
    )
    if r["run"]:
        full = r["run"]
        lines.append(
            f"whole run      {full['runs']} runs: p50 {full['p50_ms']:.3f}  p95 {full['p95_ms']:.3f}  "
            f"p99 {full['p99_ms']:.3f} ms (decode + pre + inference + post); {full['throughput_per_s']}/s"
        )
    m = r["memory"]
    lines.append(
        f"memory         rss {_mib(m['rss_before_load_bytes'])} before load, "
        f"{_mib(m['rss_after_load_bytes'])} after, {_mib(m['rss_now_bytes'])} now, "
        f"peak {_mib(m['peak_rss_bytes'])}"
    )
    return "\n".join(lines)


def _check(args: argparse.Namespace) -> int:
    from fieldbox.agents.manifest import load_manifest, replace_manifest
    from fieldbox.agents.runner import agent_from_manifest

    manifest = load_manifest(args.manifest)
    agent = agent_from_manifest(replace_manifest(manifest, warmup=1))
    agent.self_test()
    sample = manifest.self_test.sample
    sample_note = f"sample {sample}" if sample else "synthetic input"
    report: dict[str, Any] = {
        "manifest": str(args.manifest),
        "name": agent.name,
        "kind": agent.kind,
        "model": str(agent.model_path),
        "sha256": manifest.model.sha256,
        "runtime": agent.interpreter.runtime,
        "inputs": [d.to_json() for d in agent.interpreter.input_details()],
        "outputs": [d.to_json() for d in agent.interpreter.output_details()],
        "self_test": sample_note,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{args.manifest}: ok")
    print(f"  agent    {agent.name} ({agent.kind})")
    print(f"  model    {agent.model_path} (sha256 matches)")
    for label, details in (("input", report["inputs"]), ("output", report["outputs"])):
        for d in details:
            q = d["quantization"]
            quant = f", scale {q['scale']:g} zero point {q['zero_point']}" if q["scale"] else ""
            print(f"  {label:<8} {d['name']} {d['shape']} {d['dtype']}{quant}")
    print(f"  self-test passed ({report['self_test']})")
    return 0


def _schema(args: argparse.Namespace) -> int:
    from fieldbox.agents.manifest import AgentManifest
    from fieldbox.schema import describe_schema

    rows = describe_schema(AgentManifest)
    width = max(len(r[0]) for r in rows)
    for key, type_, default, doc in rows:
        print(f"{key:<{width}}  {type_}  [{default}]\n{'':<{width}}  {doc}")
    return 0


def _status(args: argparse.Namespace) -> int:
    """What the runner program serves: loaded agents with their statistics, and broken manifests."""
    from fieldbox.services.clients import RunnerClient

    client = RunnerClient(timeout=30.0)
    try:
        ping = client.ping()
        stats = client.stats()
    finally:
        client.close()
    broken: dict[str, str] = ping.get("broken", {})
    if args.json:
        print(json.dumps({"agents": stats, "broken": broken}, indent=2, sort_keys=True))
    else:
        heads = ("runs", "p50 ms", "p95 ms", "p99 ms", "rss MiB")
        print(f"{'agent':<24} {'kind':<18} " + " ".join(f"{h:>{6 if h == 'runs' else 8}}" for h in heads))
        for name in sorted(stats):
            st = stats[name]
            rss = st.get("rss_bytes")
            print(
                f"{name:<24} {st.get('kind', '?'):<18} {st.get('count', 0):>6} {_ms(st.get('p50_ms'))} "
                f"{_ms(st.get('p95_ms'))} {_ms(st.get('p99_ms'))} "
                f"{_ms(rss / 2**20 if isinstance(rss, int) else None)}"
            )
        for name, why in sorted(broken.items()):
            print(f"{name:<24} NOT LOADED: {why}")
    return 1 if broken else 0


def _ms(value: Any) -> str:
    return f"{value:>8.2f}" if isinstance(value, int | float) else f"{'-':>8}"
