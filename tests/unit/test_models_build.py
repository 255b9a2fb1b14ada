"""`python -m fieldbox_host.models`: a fresh build scores well and is byte-identical to the pinned files."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fieldbox_host.models import datasets
from fieldbox_host.models.__main__ import main
from fieldbox_host.models.build import build_all

AGENTS = Path(__file__).resolve().parents[2] / "rootfs-overlay" / "etc" / "fieldbox" / "agents"


@pytest.fixture(scope="module")
def fresh(tmp_path_factory, assets_dir):
    out = tmp_path_factory.mktemp("models")
    report = build_all(out, assets_dir)
    return out, report


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _manifest(name: str) -> tuple[dict, str]:
    path = AGENTS / name
    return tomllib.loads(path.read_text()), path.read_text()


@pytest.mark.parametrize(
    ("manifest", "int8_file"),
    [("text-classifier.toml", "intent_classifier_int8.tflite"),
     ("digits-classifier.toml", "digits_classifier_int8.tflite")],
)
def test_rebuild_gives_exactly_the_pinned_model_bytes(fresh, manifest, int8_file):
    out, _ = fresh
    doc, text = _manifest(manifest)
    assert _sha(out / doc["model"]["path"]) == doc["model"]["sha256"], (
        f"rebuilt {doc['model']['path']} differs from the sha256 pinned in {manifest}"
    )
    # The int8 alternative is documented in the manifest with its sha256: that must not drift either.
    pinned = re.search(rf"{re.escape(int8_file)}.*?([0-9a-f]{{64}})", text, re.S)
    assert pinned is not None, f"{manifest} does not document {int8_file}'s sha256"
    assert _sha(out / int8_file) == pinned.group(1)


def test_held_out_accuracy_of_the_intent_classifier(fresh):
    acc = fresh[1]["intent_classifier"]["held_out_accuracy"]
    # Measured 0.93 for numpy, float32 and int8 on 100 separately written sentences.
    assert acc["tflite_float32"] >= 0.88
    assert acc["tflite_int8"] >= 0.88
    assert acc["int8_agrees_with_float32"] >= 0.95
    assert acc["tflite_float32"] == acc["numpy_float64"]
    assert acc["float32_max_abs_diff_vs_numpy"] < 1e-5
    assert fresh[1]["intent_classifier"]["held_out_examples"] == 100


def test_held_out_accuracy_of_the_digits_classifier(fresh):
    acc = fresh[1]["digits_classifier"]["held_out_accuracy"]
    # Measured 0.975 (float32 and int8) on 359 held-out digits.
    assert acc["tflite_float32"] >= 0.95
    assert acc["tflite_int8"] >= 0.95
    assert acc["int8_agrees_with_float32"] >= 0.98
    assert acc["float32_max_abs_diff_vs_numpy"] < 1e-5


def test_report_json_is_written(fresh):
    out, report = fresh
    written = json.loads((out / "report.json").read_text())
    assert set(written) == {"intent_classifier", "digits_classifier"}
    intents = report["intent_classifier"]
    assert written["intent_classifier"]["held_out_accuracy"] == intents["held_out_accuracy"]
    files = written["intent_classifier"]["files"]
    assert files["intent_classifier_int8.tflite"]["bytes"] < files["intent_classifier.tflite"]["bytes"] / 3


def test_labels_features_and_samples(fresh):
    out, _ = fresh
    assert (out / "intent_labels.txt").read_text().split() == list(datasets.INTENT_LABELS)
    assert (out / "digits_labels.txt").read_text().split() == [str(d) for d in range(10)]
    assert json.loads((out / "intent_features.json").read_text())["buckets"] == 2048
    pngs = sorted((out / "samples").glob("digit-*.png"))
    assert len(pngs) == 20
    for png in pngs:
        with Image.open(png) as image:
            assert image.format == "PNG" and image.mode == "L" and image.size == (8, 8)
            assert np.asarray(image).max() > 100  # a real digit, not a blank
    for label in datasets.INTENT_LABELS:
        assert (out / "samples" / f"intent-{label}.txt").read_text().strip()


def test_cli_prints_accuracy_and_digests(tmp_path, assets_dir, capsys):
    assert main([str(tmp_path), "--assets", str(assets_dir)]) == 0
    printed = capsys.readouterr().out
    assert "intent_classifier" in printed and "tflite int8" in printed
    assert _sha(tmp_path / "intent_classifier.tflite") in printed


def test_cli_reports_an_unwritable_outdir_in_one_line(tmp_path, assets_dir, capsys):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the output directory should be")
    assert main([str(blocker / "models"), "--assets", str(assets_dir)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fieldbox: error: cannot write")


def test_datasets_keep_held_out_sentences_out_of_training():
    train = datasets.load_intents(datasets.DATA_DIR / "intents.tsv")
    held = datasets.load_intents(datasets.DATA_DIR / "intents_heldout.tsv")
    normal = {t.casefold().strip(" .!?") for t in train.texts}
    assert not [t for t in held.texts if t.casefold().strip(" .!?") in normal]
    assert np.bincount(held.labels).tolist() == [20] * 5
    assert np.bincount(train.labels).min() >= 60


@pytest.mark.parametrize(
    ("content", "message"),
    [("status\n", "expected 'label<TAB>text'"), ("weather\tis it raining\n", "unknown label"),
     ("# only a comment\n", "no examples")],
)
def test_bad_intent_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "bad.tsv"
    path.write_text(content)
    with pytest.raises(datasets.DatasetError, match=message):
        datasets.load_intents(path)


def test_bad_digits_file_is_an_error(tmp_path):
    path = tmp_path / "digits.csv.gz"
    path.write_bytes(b"not gzip")
    with pytest.raises(datasets.DatasetError, match="cannot read digits"):
        datasets.load_digits(path)
    path.write_bytes(gzip.compress(b"1,2,3\n"))
    with pytest.raises(datasets.DatasetError, match="64 pixels"):
        datasets.load_digits(path)


def test_split_is_seeded_and_disjoint():
    a_train, a_test = datasets.split(100, 0.2, 7)
    b_train, b_test = datasets.split(100, 0.2, 7)
    assert np.array_equal(a_train, b_train) and np.array_equal(a_test, b_test)
    assert len(a_test) == 20 and not set(a_train) & set(a_test)


def test_device_files_cover_what_the_shipped_manifests_name(fresh):
    from fieldbox_host.models.build import device_files

    out, _ = fresh
    names = set(device_files(out))
    for manifest in ("text-classifier.toml", "digits-classifier.toml"):
        doc, _ = _manifest(manifest)
        for needed in (doc["model"]["path"], doc["labels"], doc["self_test"]["sample"]):
            assert needed in names, f"{manifest} needs {needed} on the device"
    assert all((out / name).is_file() for name in names)
