"""The registry of agent kinds: manifest ``kind`` name -> the class that implements it.

Kinds are named as ``"module:Class"`` and imported only when an agent of that
kind is loaded, so a missing optional module (the text classifier lives in
:mod:`fieldbox.agents.text`, written separately) breaks only the agents that
use it, with a :class:`~fieldbox.errors.ConfigError` that says so. To add a
kind, implement :class:`fieldbox.agents.base.AgentKind` and add a line here.
"""

from __future__ import annotations

import importlib
from typing import Any

from fieldbox.errors import ConfigError

KINDS: dict[str, str] = {
    "image-detector": "fieldbox.agents.detector:ImageDetector",
    "image-classifier": "fieldbox.agents.classifier:ImageClassifier",
    "tensor": "fieldbox.agents.tensor:TensorAgent",
    "text-classifier": "fieldbox.agents.text:TextClassifier",
}
"""Manifest ``kind`` -> ``"module:Class"`` implementing :class:`~fieldbox.agents.base.AgentKind`."""


def kind_class(kind: str) -> Any:
    """Import and return the class for ``kind``; ConfigError if unknown or not installed."""
    try:
        target = KINDS[kind]
    except KeyError:
        raise ConfigError(f"unknown agent kind {kind!r} (known: {', '.join(sorted(KINDS))})") from None
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        what = kind.replace("-", " ")
        raise ConfigError(
            f"{what} support not installed (module {module_name} is missing)",
            "install a fieldbox build that includes it",
        ) from None
    try:
        return getattr(module, class_name)
    except AttributeError:
        raise ConfigError(f"{module_name} does not define {class_name} for kind {kind!r}") from None
