"""Workflows: declared trigger -> agent steps -> sinks, run by the ``workflows`` service.

Public API::

    from fieldbox.workflows import load_workflows, WorkflowSpec

    specs = load_workflows(paths.etc_dir() / "workflows")   # ConfigError naming file and key

:mod:`fieldbox.workflows.spec` is the file schema; :mod:`fieldbox.workflows.inbox`
the inbox directory protocol (claim, done, failed, crash recovery);
:mod:`fieldbox.workflows.engine` the bounded queue, workers, steps and sinks;
:mod:`fieldbox.workflows.triggers` the inbox, interval and socket triggers.
"""

from fieldbox.workflows.spec import (
    WorkflowSpec,
    load_workflow,
    load_workflows,
    parse_workflow,
    workflow_files,
)

__all__ = ["WorkflowSpec", "load_workflow", "load_workflows", "parse_workflow", "workflow_files"]
