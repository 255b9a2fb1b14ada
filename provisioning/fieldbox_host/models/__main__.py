"""``python -m fieldbox_host.models [OUTDIR] [--assets DIR]``: build, score and list the models."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fieldbox.errors import FieldboxError
from fieldbox_host.models.build import build_all


def _table(report: dict[str, Any]) -> str:
    lines = ["held-out accuracy     numpy    tflite float32  tflite int8  int8 = float32"]
    for name in ("intent_classifier", "digits_classifier"):
        acc = report[name]["held_out_accuracy"]
        lines.append(
            f"{name:<20}  {acc['numpy_float64']:<7.4f}  {acc['tflite_float32']:<14.4f}  "
            f"{acc['tflite_int8']:<11.4f}  {acc['int8_agrees_with_float32']:.4f}"
            f"   (n={report[name]['held_out_examples']})"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Build every model into OUTDIR, print the accuracy table and each file's sha256."""
    parser = argparse.ArgumentParser(prog="python -m fieldbox_host.models", description=__doc__)
    parser.add_argument("outdir", nargs="?", type=Path, default=Path("build/models"))
    parser.add_argument("--assets", type=Path, default=Path("build/assets"),
                        help="where pinned assets (digits.csv.gz) are kept (default build/assets)")
    args = parser.parse_args(argv)
    try:
        report = build_all(args.outdir, args.assets)
    except FieldboxError as exc:
        print(f"fieldbox: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        where = exc.filename or args.outdir
        print(f"fieldbox: error: cannot write {where}: {exc.strerror} (choose a writable OUTDIR)",
              file=sys.stderr)
        return 1
    print(_table(report))
    print()
    for name, info in report["all_files"].items():
        print(f"{info['sha256']}  {info['bytes']:>8}  {args.outdir / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
