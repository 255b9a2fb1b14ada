"""The workflow file schema: the shipped demo, every kind of mistake, and fuzzing."""

from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fieldbox.errors import ConfigError
from fieldbox.workflows.spec import load_workflow, load_workflows, parse_workflow, schema_rows

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "rootfs-overlay" / "etc" / "fieldbox" / "workflows"

GOOD = {
    "name": "faces",
    "trigger": {"inbox": {"dir": "inbox"}, "socket": {}},
    "steps": [{"agent": "face-detector"}],
    "sinks": {"store": {"priority": 2}, "log": {}},
}


def test_shipped_face_inbox_workflow():
    spec = load_workflow(SHIPPED / "face-inbox.toml")
    assert spec.name == "face-inbox"
    assert spec.trigger.inbox is not None and spec.trigger.inbox.dir == "inbox"
    assert spec.trigger.socket is not None and spec.trigger.interval is None
    assert [s.agent for s in spec.steps] == ["face-detector"]
    assert spec.sinks.store is not None and spec.sinks.store.priority == 2
    assert spec.processing_dir == "processing/face-inbox"
    assert set(load_workflows(SHIPPED)) == {"face-inbox"}
    # every step names an agent that is shipped
    agents = {p.stem for p in (SHIPPED.parent / "agents").glob("*.toml")}
    assert {s.agent for s in spec.steps} <= agents


def test_defaults_and_interval_trigger():
    raw = {
        "name": "snap",
        "trigger": {"interval": {"every_seconds": 5, "source": {"command": ["cat", "/x"]}}},
        "steps": [{"agent": "a"}, {"agent": "b", "input": "previous"}],
        "sinks": {"log": {"level": "debug"}},
    }
    spec = parse_workflow(raw, "snap.toml")
    assert spec.queue.size == 16 and spec.queue.workers == 2
    assert spec.trigger.interval is not None
    assert spec.trigger.interval.source.command == ["cat", "/x"]
    assert spec.steps[1].input == "previous"
    assert spec.source == "snap.toml"


def _with(path: str, value: object) -> dict:
    raw = copy.deepcopy(GOOD)
    node = raw
    keys = path.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    if value is _DELETE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return raw


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("name", "Bad Name!", "name: must be 1-64"),
        ("name", _DELETE, "name: missing"),
        ("steps", [], "steps: needs at least one"),
        ("steps", [{"agent": "x", "input": "previous"}], "first step has no previous"),
        ("steps", [{"agent": "x", "typo": 1}], "steps[0].typo: unknown key"),
        ("trigger", {}, "needs at least one of [trigger.inbox]"),
        ("trigger.inbox", {"dir": "../etc"}, "trigger.inbox.dir: must not contain '..'"),
        ("trigger.inbox", {"glob": "a/*.jpg"}, "trigger.inbox.glob: must be a file-name pattern"),
        ("trigger.inbox", {"poll_seconds": 0}, "poll_seconds: must be greater than 0"),
        ("trigger.interval", {"every_seconds": 1, "source": {}}, "exactly one of 'path' or 'command'"),
        ("trigger.interval", {"source": {"path": "x"}}, "every_seconds: missing"),
        ("sinks", {}, "needs at least one of [sinks.store]"),
        ("sinks.store", {"priority": 12}, "sinks.store.priority: must be 0"),
        ("sinks.store", {"priority": "2"}, "sinks.store.priority: expected int"),
        ("sinks.log", {"level": "loud"}, "sinks.log.level: expected"),
        ("queue", {"size": 0}, "queue.size: must be greater than 0"),
        ("colour", "red", "colour: unknown key"),
    ],
)
def test_mistakes_are_named(path, value, message):
    with pytest.raises(ConfigError) as exc_info:
        parse_workflow(_with(path, value), "wf.toml")
    text = str(exc_info.value)
    assert text.startswith("wf.toml: ")
    assert message in text
    assert "\n" not in text


def test_directory_rules(tmp_path: Path):
    (tmp_path / "a.toml").write_text(
        'name = "a"\n[trigger.inbox]\n[[steps]]\nagent = "x"\n[sinks.log]\n'
    )
    (tmp_path / "b.json").write_text(json.dumps(GOOD | {"name": "a"}))
    with pytest.raises(ConfigError, match="also declared in"):
        load_workflows(tmp_path)
    (tmp_path / "b.json").write_text(json.dumps(GOOD))
    with pytest.raises(ConfigError, match="already the inbox of workflow 'a'"):
        load_workflows(tmp_path)
    (tmp_path / "c.toml").write_text("name = [")
    errors: dict[str, str] = {}
    specs = load_workflows(tmp_path, errors)
    assert set(specs) == {"a"}
    assert set(errors) == {"b.json", "c.toml"}
    assert "invalid TOML" in errors["c.toml"]
    (tmp_path / ".hidden.toml").write_text("garbage")
    assert ".hidden.toml" not in errors
    with pytest.raises(ConfigError, match="not a directory"):
        load_workflows(tmp_path / "nope")


def test_schema_rows_cover_nested_tables():
    keys = {row[0] for row in schema_rows()}
    assert {"trigger.inbox.settle_seconds", "steps[].input", "sinks.store.priority",
            "trigger.interval.source.command", "queue.size"} <= keys


# ----------------------------------------------------------------------------- fuzz

KEYS = ["name", "trigger", "inbox", "interval", "socket", "steps", "agent", "input", "sinks", "store",
        "log", "priority", "level", "queue", "size", "workers", "dir", "glob", "every_seconds",
        "source", "path", "command", "enabled", "settle_seconds", "description", "x"]
scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
    | st.text(max_size=12) | st.sampled_from(["inbox", "item", "previous", "info", "face-detector", "..", ""])
)
values = st.recursive(
    scalars,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), c,
                                                        max_size=5),
    max_leaves=25,
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(KEYS), values, max_size=7))
def test_fuzz_parser_only_raises_config_error(raw):
    try:
        spec = parse_workflow(raw, "fuzz.toml")
    except ConfigError as exc:
        assert str(exc).startswith("fuzz.toml")
        return
    assert spec.steps and spec.name


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_fuzz_file_bytes_only_raise_config_error(tmp_path: Path, data: bytes):
    path = tmp_path / "f.toml"
    path.write_bytes(data)
    with contextlib.suppress(ConfigError):
        load_workflow(path)
