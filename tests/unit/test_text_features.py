"""The text featurizer: one definition for training and the device, stable and well-behaved."""

from __future__ import annotations

import subprocess
import sys
import zlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fieldbox.agents.text import (
    TextFeatures,
    bucket,
    decode_text,
    featurize,
    featurize_many,
    ngrams,
    tokenize,
)
from fieldbox.errors import InputError

F = TextFeatures()


def test_tokenize_normalises_case_punctuation_digits_and_unicode():
    assert tokenize("FIRE in Hall B!!") == ["fire", "in", "hall", "b"]
    assert tokenize("Set the limit to 80°C, now.") == ["set", "the", "limit", "to", "0", "c", "now"]
    assert tokenize("what's the pump's state?") == ["what's", "the", "pump's", "state"]
    assert tokenize("ＰＵＭＰ ﬁlter") == ["pump", "filter"]  # NFKC: full-width letters, ligature
    assert tokenize("Straße") == ["strasse"]  # casefold, not just lower
    assert tokenize("  ... !!! ") == []


def test_ngrams_are_tagged_by_order():
    assert ngrams(["a", "b", "c"], 2) == ["1\x1fa", "1\x1fb", "1\x1fc", "2\x1fa\x1fb", "2\x1fb\x1fc"]
    assert ngrams(["a"], 2) == ["1\x1fa"]


def test_bucket_is_crc32_mod_buckets_and_stable_across_processes():
    assert bucket("1\x1fpump", 2048) == zlib.crc32(b"1\x1fpump") % 2048
    # Python's hash() is salted per process; ours must not be.
    code = "from fieldbox.agents.text import bucket; print(bucket('2\\x1fpump\\x1fleak', 2048))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(other.stdout) == bucket("2\x1fpump\x1fleak", 2048)


def test_featurize_is_binary_l2_normalised():
    vec = featurize("the pump is leaking", F)
    assert vec.dtype == np.float32 and vec.shape == (2048,)
    assert np.isclose(np.linalg.norm(vec), 1.0)
    nonzero = vec[vec > 0]
    assert np.allclose(nonzero, nonzero[0])  # presence, not counts: all active slots equal
    assert len(nonzero) <= 4 + 3  # 4 unigrams + 3 bigrams (fewer if two collide)


def test_featurize_ignores_case_and_punctuation():
    assert np.array_equal(featurize("Pump LEAKING!", F), featurize("pump leaking", F))
    assert not np.array_equal(featurize("pump leaking", F), featurize("leaking pump", F))  # bigrams


def test_featurize_without_words_is_zero():
    assert not featurize("?!", F).any()
    assert featurize_many([], F).shape == (0, 2048)


def test_bucket_count_follows_the_config():
    assert featurize("hello", TextFeatures(buckets=16, ngrams=1)).shape == (16,)


@given(st.text(max_size=200))
def test_featurize_never_fails_and_stays_normalised(text):
    vec = featurize(text, F)
    norm = float(np.linalg.norm(vec))
    assert np.isclose(norm, 1.0, atol=1e-5) or norm == 0.0


@pytest.mark.parametrize(
    ("data", "message"),
    [(b"", "empty"), (b" \n\t", "empty"), (b"caf\xc3", "not valid UTF-8"), (b"\xff\xfe", "not valid UTF-8"),
     (b"x" * 101, "more than the limit of 100")],
)
def test_decode_text_refuses_unusable_input(data, message):
    with pytest.raises(InputError, match=message):
        decode_text(data, max_bytes=100)


def test_decode_text_accepts_utf8():
    assert decode_text("Pumpe läuft".encode(), 100) == "Pumpe läuft"
