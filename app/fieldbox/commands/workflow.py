"""``fieldbox workflow ...``: check workflow files, submit an item, show the running workflows.

::

    fieldbox workflow check [FILE ...]        validate (default: every file in $FIELDBOX_ETC/workflows)
    fieldbox workflow check --schema          every key with its type, default and meaning
    fieldbox workflow submit WORKFLOW FILE    run one file through a workflow (socket trigger)
    fieldbox workflow status                  counters of every running workflow

``submit`` and ``status`` talk to the ``workflows`` service over
``$FIELDBOX_RUN/workflows/workflows.sock``. ``submit`` exits 0 when the item's results
are stored, 1 when the item failed (the reason is printed), and 75 (EX_TEMPFAIL)
when the workflow is busy: nothing was taken, try again.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fieldbox import paths
from fieldbox.errors import BusyError, ConfigError

EXIT_BUSY = 75


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``workflow`` verb and its sub-verbs."""
    parser = subparsers.add_parser(
        "workflow",
        help="check workflow files, submit items, show status",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="workflow_verb", metavar="ACTION", required=True)

    check = sub.add_parser("check", help="validate workflow files")
    check.add_argument("files", nargs="*", type=Path, help="workflow files (default: all installed)")
    check.add_argument("--schema", action="store_true", help="print the workflow file schema")
    check.set_defaults(func=cmd_check)

    submit = sub.add_parser("submit", help="run one file through a workflow and print its results")
    submit.add_argument("workflow", help="workflow name")
    submit.add_argument("file", type=Path, help="the item (e.g. an image)")
    submit.add_argument("--name", help="item name (default: the file's name)")
    submit.add_argument("--json", action="store_true", help="print the whole reply as JSON")
    submit.set_defaults(func=cmd_submit)

    status = sub.add_parser("status", help="counters of every running workflow")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=cmd_status)


def cmd_check(args: argparse.Namespace) -> int:
    """Validate workflow files; print one line per file."""
    from fieldbox.workflows.spec import load_workflow, load_workflows, schema_rows

    if args.schema:
        for key, kind, default, doc in schema_rows():
            if kind == "a table" and default.endswith(")"):
                default = "{}"  # a table with defaults: say so, not its repr
            print(f"{key:<32} {kind:<22} {default:<10} {doc}")
        return 0
    if args.files:
        for path in args.files:
            spec = load_workflow(path)
            print(f"{path}: ok ({spec.name}: {_shape(spec)})")
        return 0
    directory = paths.etc_dir() / "workflows"
    errors: dict[str, str] = {}
    specs = load_workflows(directory, errors)
    for spec in specs.values():
        print(f"{spec.source}: ok ({spec.name}: {_shape(spec)})")
    for error in errors.values():
        print(f"fieldbox: error: {error}", file=sys.stderr)
    if errors:
        return 1
    if not specs:
        raise ConfigError(f"{directory}: no workflow files")
    return 0


def _shape(spec: Any) -> str:
    triggers = [n for n in ("inbox", "interval", "socket") if getattr(spec.trigger, n) is not None]
    sinks = [n for n in ("store", "log") if getattr(spec.sinks, n) is not None]
    steps = " -> ".join(s.agent for s in spec.steps)
    return f"{'+'.join(triggers)} -> {steps} -> {'+'.join(sinks)}"


def cmd_submit(args: argparse.Namespace) -> int:
    """Send one file over the socket trigger; print its results."""
    from fieldbox.services.clients import WorkflowsClient

    try:
        data = args.file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{args.file}: cannot read: {exc.strerror}") from None
    client = WorkflowsClient()
    try:
        reply = client.submit(args.workflow, args.name or args.file.name, data)
    except BusyError as exc:
        print(f"fieldbox: busy: {exc}", file=sys.stderr)
        return EXIT_BUSY
    finally:
        client.close()
    if args.json:
        print(json.dumps({k: v for k, v in reply.items() if k not in ("id", "ok")}, indent=1))
        return 0
    note = "already stored" if reply.get("duplicate") else f"{reply.get('stored', 0)} result(s) stored"
    print(f"{reply['workflow']}: {reply['item']}: {note} in {reply.get('ms', 0):.1f} ms")
    for result in reply.get("results", []):
        print(json.dumps(result, separators=(",", ":")))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Print every workflow's counters and the services' state."""
    from fieldbox.services.clients import WorkflowsClient

    client = WorkflowsClient(timeout=10.0)
    try:
        status = client.status()
    finally:
        client.close()
    if args.json:
        print(json.dumps({k: v for k, v in status.items() if k not in ("id", "ok")}, indent=1))
        return 0
    services = status.get("services", {})
    print("services: " + ", ".join(f"{k} {v}" for k, v in services.items()))
    print(
        f"{'workflow':<20} {'done':>7} {'failed':>7} {'dup':>5} {'in-flight':>9} {'retries':>7}  triggers"
    )
    for name, wf in status.get("workflows", {}).items():
        print(
            f"{name:<20} {wf['done']:>7} {wf['failed']:>7} {wf['duplicates']:>5} "
            f"{wf['in_flight']:>4}/{wf['capacity']:<4} {wf['retries']:>7}  {'+'.join(wf['triggers'])}"
        )
        if wf.get("last_failure"):
            print(f"  last failure: {wf['last_failure']}")
        if wf.get("last_error"):
            print(f"  last error:   {wf['last_error']}")
    for file, error in status.get("errors", {}).items():
        print(f"NOT RUNNING {file}: {error}")
    return 1 if status.get("errors") else 0
