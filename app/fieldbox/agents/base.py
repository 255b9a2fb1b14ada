"""The interface every agent kind implements, so kinds plug in without touching the runner.

An agent kind turns one input item's bytes into model input tensors and the
model's output tensors into a JSON-serialisable result. The runner
(:mod:`fieldbox.agents.runner`) owns everything around that: the interpreter,
threads, warm-up, timing, statistics and error handling. A kind is registered
by name in :data:`fieldbox.agents.kinds.KINDS` and constructed once per agent::

    kind = MyKind(manifest, interpreter)        # may raise ConfigError / ModelError
    prepared = kind.preprocess(data)            # may raise InputError
    outputs = [...]                             # the runner sets, invokes, gets
    result = kind.postprocess(outputs, prepared)

``preprocess`` returns a :class:`Prepared`: the input tensors, in the order of
``interpreter.input_details()``, plus a ``context`` mapping for whatever the
postprocessing needs to know about this one item (e.g. the letterbox offsets
that map boxes back to the original image). Keeping per-item state there, not
on ``self``, lets the runner preprocess the next item while one is in flight.

Kind-specific settings live in the manifest's free ``[options]`` table
(``manifest.options``); a kind validates them with its own dataclass through
:func:`fieldbox.schema.parse` so errors read like every other manifest error.
Relative file names in options resolve with ``manifest.resolve(path)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    from fieldbox.agents.interpreter import Array, Interpreter
    from fieldbox.agents.manifest import AgentManifest


@dataclass(frozen=True)
class Prepared:
    """One preprocessed item: the model's input tensors and per-item context."""

    inputs: list[Array]
    """One array per model input, in ``interpreter.input_details()`` order, already
    of the model's dtype and shape."""
    context: Mapping[str, Any] = field(default_factory=dict)
    """Anything ``postprocess`` needs about this item (original size, offsets, ...)."""


class AgentKind(Protocol):
    """What the runner needs from an agent kind.

    Implementations are plain classes; they need not inherit from this Protocol.
    """

    kind_name: ClassVar[str]
    """The ``kind`` value in a manifest that selects this class."""

    def __init__(self, manifest: AgentManifest, interpreter: Interpreter) -> None:
        """Validate the manifest against the model (shapes, dtypes, options, labels).

        Raise :class:`~fieldbox.errors.ConfigError` for a manifest that cannot
        work with this kind and :class:`~fieldbox.errors.ModelError` for a model
        whose tensors do not fit it.
        """

    def preprocess(self, data: bytes) -> Prepared:
        """Turn one item's bytes into model inputs; :class:`~fieldbox.errors.InputError` if unusable."""

    def postprocess(self, outputs: list[Array], prepared: Prepared) -> dict[str, Any]:
        """Turn the model's outputs (``output_details()`` order) into a JSON-serialisable dict."""
