"""Agents over the same model bytes share one interpreter (and its lock); results stay right under load."""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from fieldbox.agents import load_agents

OVERLAY = Path(__file__).resolve().parents[2] / "rootfs-overlay/etc/fieldbox/agents"


@pytest.fixture
def models_env(assets_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FIELDBOX_MODELS", str(assets_dir))
    return assets_dir


def test_detector_and_raw_tensor_agents_share_the_blazeface_interpreter(
    models_env: Path, assets_dir: Path, tmp_path: Path
) -> None:
    for name in ("face-detector.toml", "tensor-face-raw.toml"):
        (tmp_path / name).write_text((OVERLAY / name).read_text())
    agents = load_agents(tmp_path)
    face, raw = agents["face-detector"], agents["tensor-face-raw"]
    assert face.interpreter is raw.interpreter
    assert face._lock is raw._lock

    image = (assets_dir / "astronaut.png").read_bytes()
    tensor = np.full((1, 128, 128, 3), 0.25, dtype=np.float32)
    buf = io.BytesIO()
    np.save(buf, tensor)
    alone_face = json.dumps(face.run(image)["detections"])
    alone_raw = raw.run(buf.getvalue())

    def both(i: int) -> tuple[str, object]:
        return (json.dumps(face.run(image)["detections"]), raw.run(buf.getvalue()))

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(both, range(12)))
    assert {r[0] for r in results} == {alone_face}
    drop = {"latency_ms"}
    assert all({k: v for k, v in r[1].items() if k not in drop} == {k: v for k, v in alone_raw.items()
                                                                       if k not in drop} for r in results)


def test_different_thread_counts_get_their_own_interpreter(models_env: Path, tmp_path: Path) -> None:
    text = (OVERLAY / "face-detector.toml").read_text()
    (tmp_path / "a.toml").write_text(text)
    (tmp_path / "b.toml").write_text(
        text.replace('name = "face-detector"', 'name = "face-2"').replace("threads = 1", "threads = 2")
    )
    agents = load_agents(tmp_path)
    assert agents["face-detector"].interpreter is not agents["face-2"].interpreter
