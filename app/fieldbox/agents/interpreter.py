"""One interpreter interface over the TFLite runtimes the device may carry.

The image ships ``tflite_runtime`` 2.14 (``tflite_runtime.interpreter.Interpreter``);
its maintained successor ``ai_edge_litert`` has the same Python API, so either is
accepted, ``tflite_runtime`` first (it is what the appliance runs). Everything
else in fieldbox talks to :class:`Interpreter` (a Protocol) and
:class:`TensorDetail`, never to a runtime module directly, so swapping runtimes
touches this file only.

Errors: no runtime installed -> :class:`~fieldbox.errors.DependencyError`; a
file that is missing, empty, not a TFLite flatbuffer or that fails to allocate
-> :class:`~fieldbox.errors.ModelError`.
"""

from __future__ import annotations

import faulthandler
import hashlib
import importlib
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import numpy as np

from fieldbox.errors import DependencyError, ModelError

if TYPE_CHECKING:  # numpy.typing costs the runner ~9 ms of import and ~0.7 MiB at run time
    import numpy.typing as npt

RUNTIMES: tuple[str, ...] = ("tflite_runtime.interpreter", "ai_edge_litert.interpreter")
"""Runtime modules tried in order; each exposes ``Interpreter``."""

if TYPE_CHECKING:
    Array: TypeAlias = npt.NDArray[Any]
else:
    Array = np.ndarray  # the class every NDArray is; the alias only exists for the type checker
"""A numpy array of any dtype: what goes into and comes out of a model."""

_TFLITE_MAGIC = b"TFL3"
"""The flatbuffer file identifier of a TFLite model (bytes 4..8 of the file)."""


@dataclass(frozen=True)
class TensorDetail:
    """What one input or output tensor of a model is: where, what shape, what type."""

    name: str
    index: int
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    scale: float
    """Quantization scale (0.0 when the tensor is not quantized)."""
    zero_point: int
    """Quantization zero point."""

    @property
    def quantized(self) -> bool:
        """True for an integer tensor with a (per-tensor) quantization scale."""
        return self.scale != 0.0 and np.issubdtype(self.dtype, np.integer)

    def to_json(self) -> dict[str, Any]:
        """A JSON-friendly description (for ``fieldbox agent check``)."""
        return {
            "name": self.name,
            "index": self.index,
            "shape": list(self.shape),
            "dtype": self.dtype.name,
            "quantization": {"scale": self.scale, "zero_point": self.zero_point},
        }

    @classmethod
    def from_runtime(cls, raw: dict[str, Any]) -> TensorDetail:
        """Convert one of the runtime's ``get_input_details()`` dicts."""
        scale, zero_point = raw.get("quantization", (0.0, 0))
        return cls(
            name=str(raw["name"]),
            index=int(raw["index"]),
            shape=tuple(int(d) for d in raw["shape"]),
            dtype=np.dtype(raw["dtype"]),
            scale=float(scale),
            zero_point=int(zero_point),
        )


class Interpreter(Protocol):
    """The part of a TFLite interpreter fieldbox uses, typed."""

    runtime: str
    """Which runtime module is behind it, e.g. ``tflite_runtime.interpreter``."""
    threads: int

    def input_details(self) -> list[TensorDetail]:
        """The model's inputs, in order."""

    def output_details(self) -> list[TensorDetail]:
        """The model's outputs, in order."""

    def set_tensor(self, index: int, value: Array) -> None:
        """Copy ``value`` into the input tensor at ``index``."""

    def invoke(self) -> None:
        """Run the model once on the inputs set."""

    def get_tensor(self, index: int) -> Array:
        """A copy of the tensor at ``index``."""


class TFLiteInterpreter:
    """:class:`Interpreter` over ``tflite_runtime`` or ``ai_edge_litert``."""

    def __init__(self, raw: Any, runtime: str, threads: int) -> None:
        self._raw = raw
        self.runtime = runtime
        self.threads = threads
        self._inputs = [TensorDetail.from_runtime(d) for d in raw.get_input_details()]
        self._outputs = [TensorDetail.from_runtime(d) for d in raw.get_output_details()]
        # Bound methods, looked up once: these sit on the timed inference path.
        self.set_tensor: Callable[[int, Array], None] = raw.set_tensor
        self.invoke: Callable[[], None] = raw.invoke
        self.get_tensor: Callable[[int], Array] = raw.get_tensor

    @property
    def raw(self) -> Any:
        """The runtime's own interpreter object (for benchmarks and debugging)."""
        return self._raw

    def input_details(self) -> list[TensorDetail]:
        """The model's inputs, in order."""
        return list(self._inputs)

    def output_details(self) -> list[TensorDetail]:
        """The model's outputs, in order."""
        return list(self._outputs)


def runtime_class() -> tuple[str, Any]:
    """The first installed runtime's module name and its ``Interpreter`` class."""
    missing = []
    for name in RUNTIMES:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            missing.append(f"{name.split('.')[0]} ({exc})")
            continue
        return name, module.Interpreter
    raise DependencyError(
        "no TFLite runtime installed: tried " + ", ".join(missing),
        "pip install tflite-runtime==2.14.0 (or ai-edge-litert)",
    )


def open_model(path: Path, threads: int = 1) -> TFLiteInterpreter:
    """Load ``path`` into an interpreter with ``threads`` CPU threads and allocate tensors."""
    path = Path(path)
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"{path}: model file not found", "check the manifest's model.path") from None
    except OSError as exc:
        raise ModelError(f"{path}: cannot read model: {exc.strerror}") from None
    return open_model_bytes(content, threads=threads, source=str(path))


def open_model_bytes(content: bytes, threads: int = 1, source: str = "<model>") -> TFLiteInterpreter:
    """Load a model from memory (the file's bytes, already checksummed by the caller)."""
    if len(content) < 8 or content[4:8] != _TFLITE_MAGIC:
        raise ModelError(
            f"{source}: not a TFLite model (no 'TFL3' identifier; {len(content)} bytes)",
            "the file is corrupt or of another format",
        )
    runtime, cls = runtime_class()
    threads = max(1, int(threads))
    check_in_child(cls, content, source, runtime=runtime)
    try:
        raw = cls(model_content=content, num_threads=threads)
        raw.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{source}: cannot load model: {first}") from None
    return TFLiteInterpreter(raw, runtime, threads)


_CHECKED: set[bytes] = set()
"""sha256 digests of model contents already shown not to crash the runtime (per process)."""

CHILD_CHECK_TIMEOUT_S = 60.0


def _probe_marker(digest: bytes, runtime: str) -> Path | None:
    """The file that records "this model did not crash this runtime", or None when not cached.

    Set ``FIELDBOX_PROBE_CACHE`` (the device's init points it at
    ``/data/cache/model-probes``) to keep probe results across boots: under
    emulation, and on a small board, the probes cost seconds of every start.
    The key is the model's sha256 and the runtime's name and version, so a
    changed model or an updated runtime is probed again.
    """
    directory = os.environ.get("FIELDBOX_PROBE_CACHE")
    if not directory:
        return None
    package = runtime.split(".")[0]
    version = str(getattr(sys.modules.get(package), "__version__", "unknown"))
    return Path(directory) / f"{digest.hex()}-{package}-{version}"


def check_in_child(cls: Any, content: bytes, source: str, runtime: str = "") -> None:
    """Load, allocate and invoke the model once in a forked child; ModelError if that fails.

    The TFLite runtimes build the interpreter from the flatbuffer without
    verifying it, so a malformed model (right identifier, wrong offsets) makes
    them read out of bounds and kill the whole process with SIGSEGV. Any
    failure in the child (signal, error, hang) is a ModelError here, and the
    load is not retried in this process: on garbage, one attempt may raise and
    the next crash. Done once per distinct model content per process (and per
    boot-persistent marker, see :func:`_probe_marker`); skipped where
    ``os.fork`` does not exist.
    """
    digest = hashlib.sha256(content).digest()
    if digest in _CHECKED or not hasattr(os, "fork"):
        return
    marker = _probe_marker(digest, runtime)
    if marker is not None and marker.exists():
        _CHECKED.add(digest)
        return
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child, which never returns
        # A crash here is the expected outcome for a bad model; the parent
        # reports it in one line, so no fatal-error dump on stderr.
        faulthandler.disable()
        os.close(read_fd)
        code = 0
        try:
            raw = cls(model_content=content, num_threads=1)
            raw.allocate_tensors()
            for detail in raw.get_input_details():
                raw.set_tensor(detail["index"], np.zeros(detail["shape"], dtype=detail["dtype"]))
            raw.invoke()
        except BaseException as exc:
            code = 3
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            os.write(write_fd, text.encode("utf-8", "replace")[:500])
        os._exit(code)
    os.close(write_fd)
    try:
        deadline = time.monotonic() + CHILD_CHECK_TIMEOUT_S
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise ModelError(
                    f"{source}: loading the model did not finish in {CHILD_CHECK_TIMEOUT_S:.0f} s"
                )
            time.sleep(0.002)
        reason = os.read(read_fd, 600).decode("utf-8", "replace")
    finally:
        os.close(read_fd)
    if os.WIFSIGNALED(status):
        name = signal.Signals(os.WTERMSIG(status)).name
        raise ModelError(
            f"{source}: malformed TFLite model: the runtime crashed ({name}) reading it",
            "the file is corrupt or was written wrongly; rebuild or fetch it again",
        )
    if os.WEXITSTATUS(status) != 0:
        # Never repeat a failed load in this process: on garbage the runtime may
        # raise in one attempt and read out of bounds in the next.
        raise ModelError(f"{source}: cannot load model: {reason or 'the runtime rejected it'}")
    _CHECKED.add(digest)
    if marker is not None:
        try:  # best effort: without the marker the next start probes again
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
        except OSError:
            pass


def default_threads() -> int:
    """A sensible thread count when a manifest says 0: the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)
