"""``fieldbox agent run | bench | check | schema`` through the real CLI entry point."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fieldbox.cli import main

OVERLAY = Path(__file__).resolve().parents[2] / "rootfs-overlay/etc/fieldbox/agents"
FACE = OVERLAY / "face-detector.toml"


@pytest.fixture(autouse=True)
def models(assets_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIELDBOX_MODELS", str(assets_dir))


def test_run_json(assets_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["agent", "run", str(FACE), str(assets_dir / "astronaut.png")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["detections"]) == 1 and result["latency_ms"] > 0


def test_run_table(assets_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["agent", "run", str(FACE), str(assets_dir / "camera.png"), "--table"]) == 0
    out = capsys.readouterr().out
    assert "1 detection(s)" in out and "xmin" in out and "latency:" in out


def test_run_tensor_agent_from_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    buf = io.BytesIO()
    np.save(buf, np.zeros((1, 128, 128, 3), np.float32))

    class Stdin:
        buffer = io.BytesIO(buf.getvalue())

    monkeypatch.setattr(sys, "stdin", Stdin)
    assert main(["agent", "run", str(OVERLAY / "tensor-face-raw.toml"), "-", "--table"]) == 0
    assert "regressors: shape [1, 896, 16] dtype float32" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("make_input", "message"),
    [
        (lambda d, a: d / "missing.png", "no such input file"),
        (lambda d, a: _write(d / "empty.jpg", b""), "empty.jpg: empty input"),
        (
            lambda d, a: _write(d / "cut.jpg", (a / "rocket.jpg").read_bytes()[:4000]),
            "cut.jpg: corrupt image",
        ),
    ],
)
def test_bad_inputs_are_one_line_errors(
    tmp_path: Path, assets_dir: Path, capsys: pytest.CaptureFixture[str], make_input, message: str
) -> None:
    assert main(["agent", "run", str(FACE), str(make_input(tmp_path, assets_dir))]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("fieldbox: error: ") and message in err[-1]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_check_ok_and_checksum_mismatch(
    tmp_path: Path, assets_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["agent", "check", str(FACE), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["inputs"][0]["shape"] == [1, 128, 128, 3] and len(report["outputs"]) == 2
    shutil.copy(FACE, tmp_path / "face.toml")
    bad = bytearray((assets_dir / "face_detection_short_range.tflite").read_bytes())
    bad[5000] ^= 1
    (tmp_path / "face_detection_short_range.tflite").write_bytes(bytes(bad))
    assert main(["agent", "check", str(tmp_path / "face.toml")]) == 1
    assert "sha256 mismatch" in capsys.readouterr().err


def test_check_bad_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x.toml").write_text('name = "x"\nkind = "image-detector"\nthreads = "many"\n')
    assert main(["agent", "check", str(tmp_path / "x.toml")]) == 1
    assert "x.toml: model: missing" in capsys.readouterr().err


def test_bench(assets_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["agent", "bench", str(FACE), "--input", str(assets_dir / "astronaut.png"), "--runs", "4"]
    assert main([*args, "--warmup", "2", "--json", "--threads", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["threads"] == 2 and report["inference"]["runs"] == 4 and report["warmup"]["runs"] == 2
    assert report["inference"]["p50_ms"] <= report["inference"]["p99_ms"]
    assert report["run"]["runs"] == 4 and report["input"].endswith("astronaut.png")
    assert report["init_ms"] > 0 and report["memory"]["peak_rss_bytes"] > 0
    assert main(["agent", "bench", str(FACE), "--runs", "5"]) == 0
    out = capsys.readouterr().out
    assert "inference      5 runs" in out and "synthetic" in out


def test_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["agent", "schema"]) == 0
    out = capsys.readouterr().out
    assert "model.sha256" in out and "preprocess.resize" in out


def test_help_does_not_import_numpy_or_tflite() -> None:
    code = (
        "import sys; from fieldbox.cli import build_parser, DEVICE_COMMANDS; build_parser(DEVICE_COMMANDS); "
        "bad = [m for m in ('numpy', 'tflite_runtime', 'PIL') if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
