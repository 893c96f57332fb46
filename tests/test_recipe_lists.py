"""The committed real-speech dev lists (recipes/shared-data/lists): well-formed, balanced, disjoint from training."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LISTS = ROOT / "recipes" / "shared-data" / "lists"
SHARED = ROOT.parent / "shared" / "data"
SETS = ("cv-fa", "cv-multi", "libri")
_KEY = re.compile(
    r"^(commonvoice-fa/clips|commonvoice-multi/[A-Za-z-]+/clips|librispeech-251)/[^/@\s]+(@[\d.]+-[\d.]+)?$"
)


def _rows(name: str) -> list[list[str]]:
    lines = (LISTS / name).read_text(encoding="utf-8").splitlines()
    return [line.split("\t") for line in lines[1:]]


def _trials(name: str) -> list[tuple[int, str, str]]:
    out = []
    for line in (LISTS / f"{name}.trials").read_text(encoding="utf-8").splitlines():
        label, enroll, test = line.split(" ")
        out.append((int(label), enroll, test))
    return out


@pytest.mark.parametrize("name", SETS)
def test_trial_lists_are_voxceleb_format_balanced_and_labelled_by_speaker(name: str) -> None:
    trials = _trials(name)
    spk = {key: s for key, s, _ in _rows("dev.tsv")}
    assert len(trials) == len(set(trials)) >= 200
    assert sum(t[0] for t in trials) * 2 == len(trials)  # as many targets as nontargets
    for label, enroll, test in trials:
        assert label in (0, 1) and enroll != test
        assert _KEY.match(enroll) and _KEY.match(test), (enroll, test)
        assert (spk[enroll] == spk[test]) == (label == 1), (enroll, test)


def test_no_dev_speaker_language_or_clip_is_in_the_training_split() -> None:
    train, dev = _rows("train.tsv"), _rows("dev.tsv")
    held = json.loads((LISTS / "heldout.json").read_text(encoding="utf-8"))
    train_speakers, train_keys = {r[1] for r in train}, {r[0] for r in train}
    assert not {r[1] for r in dev} & train_speakers
    assert not {r[0].split("@")[0] for r in dev} & train_keys
    assert not set(held["cv_fa_held_out_speakers"] + held["libri_held_out_speakers"]) & train_speakers
    langs = set(held["cv_multi_held_out_languages"])
    assert langs and not {r[2].split("/")[1] for r in train if r[2].startswith("commonvoice-multi/")} & langs
    assert all(_KEY.match(r[0]) for r in train + dev)


def test_counts_in_heldout_json_match_the_lists() -> None:
    counts = json.loads((LISTS / "heldout.json").read_text(encoding="utf-8"))["counts"]
    dev = _rows("dev.tsv")
    for name in SETS:
        trials = _trials(name)
        assert counts[name]["target"] == sum(t[0] for t in trials)
        assert counts[name]["clips"] == sum(r[2] == name for r in dev)
    assert counts["train"]["clips"] == len(_rows("train.tsv"))


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} not present (real speech is never committed)")
def test_every_key_resolves_to_a_file_in_the_shared_data() -> None:
    keys = {r[0] for r in _rows("train.tsv") + _rows("dev.tsv")}
    missing = sorted(k for k in keys if not (SHARED / k.split("@")[0]).is_file())
    assert not missing, f"{len(missing)} keys name no file, first {missing[:3]}"
