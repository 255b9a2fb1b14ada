"""The skip rule itself: a skip at run time or at collection time fails under CI, and only there."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]

MODULES = {
    "test_runtime_skip.py": "import pytest\n\ndef test_a():\n    pytest.skip('no tool')\n",
    "test_module_skip.py": "import pytest\npytest.skip('no tool', allow_module_level=True)\n"
    "\ndef test_b():\n    pass\n",
    "test_importorskip.py": "import pytest\npytest.importorskip('no_such_module_here')\n"
    "\ndef test_c():\n    pass\n",
}


def _run(tmp_path: Path, ci: bool) -> subprocess.CompletedProcess[str]:
    for name, text in MODULES.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "conftest.py").write_text(
        "from ci_rules import pytest_make_collect_report, pytest_runtest_makereport  # noqa: F401\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci:
        env["CI"] = "true"
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider",
         "--continue-on-collection-errors", "--rootdir", str(tmp_path), str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120, check=False,
    )  # fmt: skip


def test_every_kind_of_skip_fails_under_ci(tmp_path: Path) -> None:
    proc = _run(tmp_path, ci=True)
    assert proc.returncode != 0, proc.stdout
    assert "1 failed" in proc.stdout and "2 errors" in proc.stdout, proc.stdout
    assert proc.stdout.count("counts as a failure") >= 3, proc.stdout


def test_skips_stay_skips_outside_ci(tmp_path: Path) -> None:
    proc = _run(tmp_path, ci=False)
    assert proc.returncode == 0, proc.stdout
    assert "3 skipped" in proc.stdout, proc.stdout
