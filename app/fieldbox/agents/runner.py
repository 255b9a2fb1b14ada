"""The agent: a loaded, checked, warmed-up model plus its kind's pre/post-processing.

This is the public API other parts of fieldbox use (re-exported by
:mod:`fieldbox.agents`)::

    agent = load_agent(path)             # manifest -> sha256 check -> interpreter -> kind -> warm-up
    agents = load_agents(directory)      # every *.toml / *.json, by agent name
    result = agent.run(data)             # one item's bytes -> JSON-serialisable dict
    agent.self_test()                    # health check: ModelError if the model does not run right
    agent.stats()                        # latency percentiles, throughput, memory, init time

``run`` raises :class:`~fieldbox.errors.InputError` for an item that cannot be
used (truncated image, empty file, wrong shape) and
:class:`~fieldbox.errors.ModelError` if the model itself fails; it never lets
another exception escape, so a workflow can record the item as failed and go on.

Timing. ``run`` measures two things: the whole call (decode + preprocess +
inference + postprocess; ``latency_ms``) and the inference step alone
(``inference_ms``: set_tensor, invoke, get_tensor). Both go into bounded rings
(:class:`~fieldbox.agents.latency.LatencyRing`) that :meth:`Agent.stats`
summarises. The interpreter is not thread-safe, so the inference step holds a
lock; pre- and post-processing run outside it.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fieldbox.agents.base import AgentKind, Prepared
from fieldbox.agents.interpreter import Array, TFLiteInterpreter, default_threads, open_model_bytes
from fieldbox.agents.kinds import kind_class
from fieldbox.agents.latency import LatencyRing, peak_rss_bytes, rss_bytes
from fieldbox.agents.manifest import AgentManifest, load_manifest
from fieldbox.errors import ConfigError, FieldboxError, InputError, ModelError

log = logging.getLogger(__name__)

MANIFEST_SUFFIXES = (".toml", ".json")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


class Agent:
    """One loaded agent. Build it with :func:`load_agent`; then :meth:`run` items through it."""

    def __init__(
        self,
        manifest: AgentManifest,
        interpreter: TFLiteInterpreter,
        kind: AgentKind,
        model_path: Path,
        init_ms: float,
        lock: threading.Lock | None = None,
    ) -> None:
        self.manifest = manifest
        self.name: str = manifest.name
        self.kind: str = manifest.kind
        self.model_path = model_path
        self.interpreter = interpreter
        self._kind = kind
        self._lock = lock or threading.Lock()  # shared by the agents that share the interpreter
        self._input_indices = [d.index for d in interpreter.input_details()]
        self._output_indices = [d.index for d in interpreter.output_details()]
        self._run_latency = LatencyRing()
        self._infer_latency = LatencyRing()
        self._errors = 0
        self._init_ms = init_ms
        self._warmup_ms = 0.0
        self._clock: Callable[[], float] = time.perf_counter

    # --- the hot path -------------------------------------------------------------------------

    def infer(self, inputs: list[Array]) -> list[Array]:
        """The timed inference step: set every input, invoke, copy every output; records its latency.

        This is exactly what ``run`` does around the model call, and what the
        ``runner`` benchmark compares with a bare set_tensor/invoke/get_tensor loop.
        """
        interp = self.interpreter
        clock = self._clock
        with self._lock:
            start = clock()
            for index, array in zip(self._input_indices, inputs, strict=True):
                interp.set_tensor(index, array)
            interp.invoke()
            outputs = [interp.get_tensor(index) for index in self._output_indices]
            self._infer_latency.record(clock() - start)
        return outputs

    def run(self, data: bytes) -> dict[str, Any]:
        """One inference on one item's bytes; a JSON-serialisable result incl. ``latency_ms``.

        Raises InputError (the item is unusable) or ModelError (the model failed).
        """
        start = self._clock()
        try:
            prepared = self.prepare(data)
            try:
                outputs = self.infer(prepared.inputs)
            except (ValueError, RuntimeError) as exc:
                raise ModelError(f"agent {self.name}: inference failed: {_one_line(exc)}") from None
            try:
                result = self._kind.postprocess(outputs, prepared)
            except FieldboxError:
                raise
            except Exception as exc:
                raise ModelError(f"agent {self.name}: postprocessing failed: {_one_line(exc)}") from None
        except FieldboxError:
            self._errors += 1
            raise
        elapsed = self._clock() - start
        self._run_latency.record(elapsed)
        result["latency_ms"] = round(elapsed * 1000.0, 3)
        return result

    def prepare(self, data: bytes) -> Prepared:
        """The kind's preprocessing of one item, with any failure turned into InputError."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InputError(f"agent {self.name}: input must be bytes, got {type(data).__name__}")
        try:
            return self._kind.preprocess(bytes(data))
        except FieldboxError:
            raise
        except Exception as exc:  # a kind's bug or an input no check foresaw: still one line
            raise InputError(f"agent {self.name}: cannot prepare input: {_one_line(exc)}") from None

    # --- health and figures -------------------------------------------------------------------

    def synthetic_inputs(self) -> list[Array]:
        """Mid-range tensors of every input's shape and dtype (warm-up and self-test without a sample)."""
        arrays = []
        for detail in self.interpreter.input_details():
            shape = tuple(max(1, d) for d in detail.shape)
            if np.issubdtype(detail.dtype, np.integer):
                fill = detail.zero_point if detail.quantized else 0
                arrays.append(np.full(shape, fill, dtype=detail.dtype))
            elif detail.dtype == np.bool_:
                arrays.append(np.zeros(shape, dtype=np.bool_))
            else:
                arrays.append(np.zeros(shape, dtype=detail.dtype))
        return arrays

    def warm_up(self, runs: int) -> float:
        """Run ``runs`` synthetic inferences (not counted in stats); returns the time taken in ms."""
        inputs = self.synthetic_inputs()
        interp = self.interpreter
        start = time.perf_counter()
        try:
            for _ in range(runs):
                with self._lock:
                    for index, array in zip(self._input_indices, inputs, strict=True):
                        interp.set_tensor(index, array)
                    interp.invoke()
                    for index in self._output_indices:
                        interp.get_tensor(index)
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"agent {self.name}: warm-up inference failed: {_one_line(exc)}") from None
        self._warmup_ms = (time.perf_counter() - start) * 1000.0
        return self._warmup_ms

    def self_test(self) -> None:
        """Run the manifest's sample (or synthetic inputs) and check the result; ModelError if wrong."""
        spec = self.manifest.self_test
        if spec.sample is None:
            outputs = self._checked_infer(self.synthetic_inputs())
            for array, detail in zip(outputs, self.interpreter.output_details(), strict=True):
                if tuple(array.shape) != tuple(max(1, d) for d in detail.shape) and -1 not in detail.shape:
                    raise ModelError(
                        f"agent {self.name}: self-test: output {detail.name!r} has shape "
                        f"{list(array.shape)}, expected {list(detail.shape)}"
                    )
                if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
                    raise ModelError(f"agent {self.name}: self-test: output {detail.name!r} is not finite")
            return
        try:
            sample = self.manifest.resolve(spec.sample, "self-test sample")
            data = sample.read_bytes()
        except (ConfigError, OSError) as exc:
            raise ModelError(f"agent {self.name}: self-test: {exc}") from None
        try:
            result = self.run(data)
        except InputError as exc:
            raise ModelError(f"agent {self.name}: self-test sample {sample.name}: {exc}") from None
        count = len(result.get("detections", []))
        where = f"agent {self.name}: self-test: {count} detection(s) on {sample.name}"
        if spec.min_results is not None and count < spec.min_results:
            raise ModelError(f"{where}, expected at least {spec.min_results}")
        if spec.max_results is not None and count > spec.max_results:
            raise ModelError(f"{where}, expected at most {spec.max_results}")
        if spec.expect_label is not None and result.get("label") != spec.expect_label:
            raise ModelError(
                f"agent {self.name}: self-test: label {result.get('label')!r} on {sample.name}, "
                f"expected {spec.expect_label!r}"
            )

    def _checked_infer(self, inputs: list[Array]) -> list[Array]:
        try:
            return self.infer(inputs)
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"agent {self.name}: self-test inference failed: {_one_line(exc)}") from None

    def stats(self) -> dict[str, Any]:
        """count, errors, p50/p95/p99 ms (whole run and inference alone), throughput/s, rss bytes, init ms."""
        run = self._run_latency.summary()
        infer = self._infer_latency.summary()
        return {
            "name": self.name,
            "kind": self.kind,
            "runtime": self.interpreter.runtime,
            "threads": self.interpreter.threads,
            "count": run["count"],
            "errors": self._errors,
            "p50_ms": run["p50_ms"],
            "p95_ms": run["p95_ms"],
            "p99_ms": run["p99_ms"],
            "mean_ms": run["mean_ms"],
            "max_ms": run["max_ms"],
            "throughput_per_s": run["throughput_per_s"],
            "inference": infer,
            "rss_bytes": rss_bytes(),
            "peak_rss_bytes": peak_rss_bytes(),
            "init_ms": round(self._init_ms, 3),
            "warmup_ms": round(self._warmup_ms, 3),
        }

    def __repr__(self) -> str:
        return f"Agent(name={self.name!r}, kind={self.kind!r}, model={self.model_path.name!r})"


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def read_model(manifest: AgentManifest) -> tuple[Path, bytes]:
    """Resolve and read the manifest's model, checking its sha256; ModelError on any problem."""
    try:
        path = manifest.model_path()
    except ConfigError as exc:
        raise ModelError(exc.message, exc.hint) from None
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read model: {exc.strerror}") from None
    actual = sha256_hex(content)
    if actual != manifest.model.sha256:
        raise ModelError(
            f"{path}: sha256 mismatch: {manifest.location} expects {manifest.model.sha256}, "
            f"file has {actual}",
            "the model file is corrupt or not the one the manifest was written for",
        )
    return path, content


def check_input_spec(manifest: AgentManifest, interpreter: TFLiteInterpreter) -> None:
    """ConfigError when the manifest's declared input shape/dtype differ from the model's first input."""
    spec = manifest.input
    detail = interpreter.input_details()[0]
    if spec.shape is not None:
        ok = len(spec.shape) == len(detail.shape) and all(
            s in (-1, d) for s, d in zip(spec.shape, detail.shape, strict=True)
        )
        if not ok:
            raise ConfigError(
                f"{manifest.location}: input.shape: manifest says {spec.shape}, the model's input "
                f"{detail.name!r} is {list(detail.shape)}"
            )
    if spec.dtype is not None and np.dtype(spec.dtype) != detail.dtype:
        raise ConfigError(
            f"{manifest.location}: input.dtype: manifest says {spec.dtype}, the model's input "
            f"{detail.name!r} is {detail.dtype.name}"
        )


SharedInterpreters = dict[tuple[bytes, int], tuple[TFLiteInterpreter, threading.Lock]]
"""(sha256 of the model, threads) -> the interpreter loaded for it and the lock around its use."""


def agent_from_manifest(manifest: AgentManifest, shared: SharedInterpreters | None = None) -> Agent:
    """Build, check and warm up an agent from a parsed manifest.

    With ``shared``, agents whose manifests name the same model bytes (and
    thread count) use ONE interpreter and one lock: an interpreter with its
    XNNPACK-packed weights and tensor arena costs ~4.4 MiB for the BlazeFace
    model on the device, and the agent kinds only read its details. Such
    agents take turns on the model instead of running it in parallel, and only
    the first warms it up (a BlazeFace invoke is ~0.25 s of boot under emulation).
    """
    start = time.perf_counter()
    path, content = read_model(manifest)
    threads = manifest.threads or default_threads()
    key = (hashlib.sha256(content).digest(), threads)
    reused = shared is not None and key in shared
    if shared is not None and reused:
        interpreter, lock = shared[key]
    else:
        interpreter, lock = open_model_bytes(content, threads=threads, source=str(path)), threading.Lock()
    check_input_spec(manifest, interpreter)
    cls = kind_class(manifest.kind)
    try:
        kind: AgentKind = cls(manifest, interpreter)
    except FieldboxError as exc:
        raise type(exc)(f"{manifest.location}: {exc.message}", exc.hint) from None
    init_ms = (time.perf_counter() - start) * 1000.0
    agent = Agent(manifest, interpreter, kind, path, init_ms, lock)
    if not reused:  # a shared interpreter was warmed by the agent that loaded it
        agent.warm_up(manifest.warmup)
    if shared is not None:
        shared.setdefault(key, (interpreter, lock))
    log.debug(
        "agent %s loaded in %.1f ms (+%.1f ms warm-up)", agent.name, init_ms, agent.stats()["warmup_ms"]
    )
    return agent


def load_agent(manifest_path: Path) -> Agent:
    """Validate the manifest, check the model's sha256, load the model, warm up.

    Raises ConfigError (manifest), ModelError (model missing, corrupt, wrong
    checksum, does not fit the kind) or DependencyError (no TFLite runtime).
    """
    return agent_from_manifest(load_manifest(Path(manifest_path)))


def manifest_files(directory: Path) -> list[Path]:
    """The manifest files in ``directory`` (``*.toml``, ``*.json``), sorted by name."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"{directory}: not a directory of agent manifests")
    return sorted(p for p in directory.iterdir() if p.suffix in MANIFEST_SUFFIXES and p.is_file())


def load_agents(directory: Path, errors: dict[Path, FieldboxError] | None = None) -> dict[str, Agent]:
    """Every agent declared in ``directory``, by name.

    Without ``errors`` the first failure raises. With it, each failing
    manifest's error is stored under its path and the others still load, so
    one bad file does not take every agent down.
    """
    agents: dict[str, Agent] = {}
    seen: dict[str, Path] = {}
    shared: SharedInterpreters = {}
    for path in manifest_files(directory):
        try:
            manifest = load_manifest(path)
            if manifest.name in seen:
                raise ConfigError(
                    f"{path}: name: agent {manifest.name!r} is also declared in {seen[manifest.name]}"
                )
            seen[manifest.name] = path
            agents[manifest.name] = agent_from_manifest(manifest, shared)
        except FieldboxError as exc:
            if errors is None:
                raise
            log.error("agent manifest %s: %s", path, exc)
            errors[path] = exc
    return agents
