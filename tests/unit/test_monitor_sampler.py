"""The sampler on this machine (real psutil), sysfs readers on a tree the test writes, the event listener."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from fieldbox.monitor import events
from fieldbox.monitor.sampler import Sampler, read_thermal, read_throttled, throttle_samples


def test_real_sample_has_the_basic_figures(tmp_path: Path) -> None:
    sampler = Sampler(tmp_path)
    first = {m for m, _, _ in sampler.sample(now=1.0)}
    expected = {"cpu.percent", "cpu.load1", "mem.used_pct", "mem.available_b", "disk.used_pct", "disk.free_b"}
    assert expected <= first
    second = sampler.sample(now=2.0)
    names = {m for m, _, _ in second}
    assert {"net.rx_bps", "net.tx_bps"} <= names  # rates need two readings
    for metric, value, _ in second:
        assert value == value, metric  # no NaN


def test_our_programs_are_found_by_module_name(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)", "-m", "fieldbox.services.sync"],
    )
    try:
        sampler = Sampler(tmp_path)
        samples = sampler.sample(now=1.0) + sampler.sample(now=2.0)
        mine = [(m, v) for m, v, t in samples if t == {"program": "sync"}]
        assert ("proc.rss_b" in {m for m, _ in mine}) and all(v >= 0 for _, v in mine)
    finally:
        child.kill()
        child.wait()


def test_thermal_zones(tmp_path: Path) -> None:
    for i, (kind, milli) in enumerate([("cpu-thermal", "48312"), ("gpu", "51000")]):
        zone = tmp_path / "sys" / "class" / "thermal" / f"thermal_zone{i}"
        zone.mkdir(parents=True)
        (zone / "temp").write_text(milli + "\n")
        (zone / "type").write_text(kind + "\n")
    broken = tmp_path / "sys" / "class" / "thermal" / "thermal_zone9"
    broken.mkdir()
    (broken / "temp").write_text("garbage")
    assert read_thermal(tmp_path) == [
        ("temp.c", 48.312, {"zone": "cpu-thermal"}),
        ("temp.c", 51.0, {"zone": "gpu"}),
    ]


def test_throttling_from_sysfs_or_vcgencmd(tmp_path: Path) -> None:
    assert read_throttled(tmp_path, run=lambda argv: None) is None
    assert read_throttled(tmp_path, run=lambda argv: "throttled=0x50005\n") == 0x50005
    node = tmp_path / "sys" / "devices" / "platform" / "soc" / "soc:firmware"
    node.mkdir(parents=True)
    (node / "get_throttled").write_text("4\n")
    assert read_throttled(tmp_path, run=lambda argv: "throttled=0x1") == 4
    flags = dict((m, v) for m, v, _ in throttle_samples(0x50005))
    assert flags["pi.throttled_word"] == float(0x50005)
    # 0x50005 = bits 0, 2, 16, 18
    assert flags["pi.under_voltage"] == 1.0 and flags["pi.throttled"] == 1.0
    assert flags["pi.under_voltage_occurred"] == 1.0 and flags["pi.throttled_occurred"] == 1.0
    assert flags["pi.arm_freq_capped"] == 0.0 and flags["pi.soft_temp_limit"] == 0.0
    assert flags["pi.arm_freq_capped_occurred"] == 0.0


def _notification(eventname: str, payload: str) -> str:
    header = (
        f"ver:3.0 server:supervisor serial:1 pool:events poolserial:1 eventname:{eventname} "
        f"len:{len(payload)}"
    )
    return header + "\n" + payload


def test_event_listener_protocol_records_unexpected_exits_and_fatal() -> None:
    stdin = io.StringIO(
        _notification("PROCESS_STATE_EXITED", "processname:runner groupname:runner from_state:RUNNING "
                      "expected:0 pid:4242")
        + _notification("PROCESS_STATE_EXITED", "processname:oneshot groupname:oneshot from_state:RUNNING "
                        "expected:1 pid:7")
        + _notification("PROCESS_STATE_FATAL", "processname:sync groupname:sync from_state:BACKOFF")
        + _notification("TICK_60", "when:1")
    )
    stdout = io.StringIO()
    recorded: list[tuple[str, dict[str, object]]] = []
    handled = events.listen(lambda k, d: recorded.append((k, d)), stdin=stdin, stdout=stdout)
    assert handled == 4
    assert recorded == [
        ("process.exited", {"program": "runner", "group": "runner", "from_state": "RUNNING", "pid": 4242,
                            "expected": False}),
        ("process.fatal", {"program": "sync", "group": "sync", "from_state": "BACKOFF"}),
    ]
    assert stdout.getvalue() == "READY\n" + "RESULT 2\nOKREADY\n" * 4


def test_event_listener_acknowledges_even_when_the_store_fails() -> None:
    from fieldbox.errors import StoreError

    def fail(kind: str, detail: dict[str, object]) -> None:
        raise StoreError("disk full")

    stdin = io.StringIO(_notification("PROCESS_STATE_FATAL", "processname:x groupname:x from_state:BACKOFF"))
    stdout = io.StringIO()
    assert events.listen(fail, stdin=stdin, stdout=stdout) == 1
    assert "RESULT 2\nOK" in stdout.getvalue()
    assert os.environ is not None
