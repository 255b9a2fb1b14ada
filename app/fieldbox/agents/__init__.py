"""Agents: TFLite models declared in manifests, with real pre- and post-processing.

Public API (keep these names; other packages import them)::

    from fieldbox.agents import Agent, load_agent, load_agents

    agent = load_agent(Path("/etc/fieldbox/agents/face-detector.toml"))
    result = agent.run(image_bytes)      # JSON-serialisable dict incl. "latency_ms"
    agent.self_test()                    # ModelError if the model does not run
    agent.stats()                        # count, p50/p95/p99 ms, throughput, rss, init ms

Modules: :mod:`.interpreter` (one interface over tflite_runtime / ai_edge_litert),
:mod:`.manifest` (the typed schema), :mod:`.base` (the kind interface),
:mod:`.kinds` (the registry), :mod:`.image` (decoding and resizing),
:mod:`.detector`, :mod:`.classifier`, :mod:`.tensor` (the kinds),
:mod:`.latency` (the latency ring buffer), :mod:`.runner` (:class:`Agent`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["Agent", "load_agent", "load_agents"]

if TYPE_CHECKING:
    from fieldbox.agents.runner import Agent, load_agent, load_agents


def __getattr__(name: str) -> Any:
    # Lazy, so `import fieldbox.agents.manifest` does not pull in numpy.
    if name in __all__:
        from fieldbox.agents import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'fieldbox.agents' has no attribute {name!r}")
