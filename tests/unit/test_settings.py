"""Live settings: config-document keys applied to a running program's config, checked, and reverted."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from fieldbox import settings
from fieldbox.monitor.config import MonitorConfig
from fieldbox.settings import LiveSettings
from fieldbox.store import FileKeyProvider, Store
from fieldbox.sync import configstore
from fieldbox.sync.client import SyncClient
from fieldbox.sync.config import SyncConfig
from fieldbox.sync.hlc import Clock

README = Path(__file__).resolve().parents[2] / "README.md"


def test_a_key_overrides_the_file_and_deleting_it_goes_back(caplog: pytest.LogCaptureFixture) -> None:
    live = LiveSettings("monitor", MonitorConfig(interval_s=10.0))
    with caplog.at_level(logging.INFO, logger="fieldbox.settings"):
        assert live.apply({"monitor.interval_s": 2}).interval_s == 2.0
        assert live.apply({}).interval_s == 10.0
    assert [r.getMessage() for r in caplog.records] == [
        "setting monitor.interval_s = 2 (was 10) from the config document",
        "setting monitor.interval_s = 10 (was 2) from the config document",
    ]


@pytest.mark.parametrize("bad", ["fast", True, None, [1], 0.1, 1e9, -5])
def test_a_bad_value_is_refused_once_and_the_current_value_kept(
    bad: object, caplog: pytest.LogCaptureFixture
) -> None:
    live = LiveSettings("sync", SyncConfig(idle_s=5.0))
    live.apply({"sync.idle_s": 2.0})
    with caplog.at_level(logging.ERROR, logger="fieldbox.settings"):
        for _ in range(3):
            assert live.apply({"sync.idle_s": bad}).idle_s == 2.0
    assert len(caplog.records) == 1 and "sync.idle_s" in caplog.records[0].getMessage()


def test_other_programs_keys_and_unknown_keys_do_nothing() -> None:
    live = LiveSettings("sync", SyncConfig(idle_s=5.0))
    assert live.apply({"monitor.interval_s": 1.0, "sync.unknown": 3}) == SyncConfig(idle_s=5.0)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store.open(tmp_path / "store" / "fieldbox.db", FileKeyProvider(tmp_path / "keys" / "kek"))
    yield s
    s.close()


def test_values_by_prefix_treat_like_wildcards_literally(store: Store) -> None:
    clock = Clock("dev-1")
    for key, value in (("sync.idle_s", 1.5), ("syncXidle", 9), ("sync_idle", 8), ("monitor.interval_s", 3)):
        configstore.set_local(store, clock, key, value)
    assert configstore.values(store, "sync.") == {"sync.idle_s": 1.5}
    assert configstore.values(store, "sync_") == {"sync_idle": 8}


def test_the_sync_client_takes_its_keys_from_the_store(store: Store) -> None:
    client = SyncClient(store, SyncConfig(idle_s=5.0, config_interval_s=300.0), device_id="dev-1")
    configstore.set_local(store, Clock("dev-1"), "sync.config_interval_s", 30)
    assert client.step() == 5.0  # no server: the step only applies settings and bounds
    assert client.config.config_interval_s == 30.0 and client.config.idle_s == 5.0


def test_the_readme_lists_every_key() -> None:
    text = README.read_text()
    for key, program, span, _ in settings.keys_table():
        assert f"| `{key}` | {program} | {span} |" in text, key
