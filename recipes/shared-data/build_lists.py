"""Build the real-speech dev trial lists and the training split from `../shared/data` (deterministic, seeded).

    python recipes/shared-data/build_lists.py [--shared ../shared/data] [--out recipes/shared-data/lists]
                                              [--manifest DIR]

Writes into `--out` (committed; keys are paths relative to the shared folder, never audio):
  train.tsv        `key speaker corpus`: everything the recipe may train on
  dev.tsv          `key speaker set`: every clip the dev trials use
  heldout.json     the seed and what was held out (Common Voice fa speakers, languages, LibriSpeech speakers)
  cv-fa.trials, cv-multi.trials, libri.trials   VoxCeleb format `1|0 enroll test`
`--manifest DIR` also writes `DIR/train.jsonl` (absolute paths) for `speakerforge train --data`.

A key is a file relative to the shared folder; `PATH@START-END` is the segment [START, END) in seconds of that file
(LibriSpeech halves). Speakers: `cv-` + the first 16 hex digits of a Common Voice client_id (one namespace for fa and
the 30 languages: a client_id is an account, the same person in every language), `libri-` + the LibriSpeech ID.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from speakerforge.data.audio import audio_info
from speakerforge.data.manifest import Utterance, write_manifest
from speakerforge.errors import DataError

SEED = 251
FA_HELD_OUT = 14  # of the fa speakers with >= FA_MIN_CLIPS clips, the largest FA_KEEP_LARGEST excluded
FA_MIN_CLIPS = 5
FA_KEEP_LARGEST = 2  # the two speakers holding 81% of the fa clips stay in training
LANGS_HELD_OUT = 7  # of the languages with >= LANG_MIN_SPEAKERS speakers of >= MULTI_MIN_CLIPS clips
LANG_MIN_SPEAKERS = 5
MULTI_MIN_CLIPS = 4
LIBRI_HELD_OUT = 100  # half female, half male (SPEAKERS.TXT)
MAX_CLIPS_PER_SPEAKER = 20  # for target pairs, so that no speaker dominates a set (190 target pairs at most)
CV_FA, CV_MULTI, LIBRI = "commonvoice-fa", "commonvoice-multi", "librispeech-251"


@dataclass(frozen=True)
class Clip:
    """One clip: its key (relative to the shared folder), speaker, corpus and, for Common Voice, language."""

    key: str
    spk: str
    corpus: str
    lang: str = ""


def cv_speaker(client_id: str) -> str:
    """`cv-` + the first 16 hex digits of a client_id (collisions are checked when reading)."""
    return "cv-" + client_id[:16]


def _read_tsv(tsv: Path) -> Iterable[tuple[str, str]]:
    with tsv.open(encoding="utf-8", newline="") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(rows)
        i, j = header.index("client_id"), header.index("path")
        for row in rows:
            if len(row) > max(i, j) and row[i] and row[j]:
                yield row[i], row[j]


def read_commonvoice(shared: Path, locale: str, names: Iterable[str], corpus: str, lang: str) -> list[Clip]:
    """Clips listed in the locale's tsv files that exist under `clips/`, each once, in a stable order."""
    folder = shared / locale
    clips: dict[str, Clip] = {}
    ids: dict[str, str] = {}
    for name in names:
        for client_id, path in _read_tsv(folder / name):
            key = f"{locale}/clips/{path}"
            if key in clips or not (shared / key).is_file():
                continue
            spk = cv_speaker(client_id)
            if ids.setdefault(spk, client_id) != client_id:
                raise DataError(f"{folder / name}: two client_ids share the speaker name {spk}")
            clips[key] = Clip(key, spk, corpus, lang)
    return sorted(clips.values(), key=lambda c: c.key)


def read_librispeech(shared: Path) -> tuple[list[Clip], dict[str, str]]:
    """The 251 files and each speaker's sex from SPEAKERS.TXT."""
    clips = [
        Clip(f"{LIBRI}/{p.name}", "libri-" + p.name.split("-")[0], LIBRI)
        for p in sorted((shared / LIBRI).glob("*.flac"))
    ]
    sex = {}
    for line in (shared / LIBRI / "SPEAKERS.TXT").read_text(encoding="utf-8").splitlines():
        parts = [p.strip() for p in line.split("|")]
        if not line.startswith(";") and len(parts) >= 2:
            sex["libri-" + parts[0]] = parts[1]
    return clips, sex


def by_speaker(clips: Iterable[Clip]) -> dict[str, list[Clip]]:
    """Speaker -> clips, both in a stable order."""
    out: dict[str, list[Clip]] = defaultdict(list)
    for c in clips:
        out[c.spk].append(c)
    return dict(sorted(out.items()))


def target_pairs(groups: dict[str, list[Clip]], rng: random.Random, min_clips: int) -> list[tuple[Clip, Clip]]:
    """Every pair of clips within a speaker (at most MAX_CLIPS_PER_SPEAKER seeded clips each)."""
    pairs = []
    for clips in groups.values():
        if len(clips) < min_clips:
            continue
        chosen = sorted(rng.sample(clips, min(len(clips), MAX_CLIPS_PER_SPEAKER)), key=lambda c: c.key)
        pairs += [(a, b) for i, a in enumerate(chosen) for b in chosen[i + 1 :]]
    return pairs


def nontarget_pairs(
    targets: list[tuple[Clip, Clip]], impostors: dict[str, list[Clip]], rng: random.Random
) -> list[tuple[Clip, Clip]]:
    """One nontarget per target trial: its enroll clip against a random clip of a random other speaker.

    `impostors` maps a pool name (the language, or one pool) to its clips; the impostor comes from the enroll clip's
    pool when that pool holds another speaker. Each enroll clip is thus as often in targets as in nontargets."""
    seen: set[tuple[str, str]] = set()
    out = []
    for enroll, _ in targets:
        pool = [c for c in impostors[enroll.lang] if c.spk != enroll.spk]
        for _attempt in range(100):
            test = rng.choice(pool)
            if (enroll.key, test.key) not in seen:
                break
        seen.add((enroll.key, test.key))
        out.append((enroll, test))
    return out


def interleave(targets: list[tuple[Clip, Clip]], nontargets: list[tuple[Clip, Clip]]) -> list[tuple[int, str, str]]:
    """`(label, enroll, test)` lines: each target followed by its nontarget."""
    lines = []
    for (a, b), (c, d) in zip(targets, nontargets, strict=True):
        lines += [(1, a.key, b.key), (0, c.key, d.key)]
    return lines


def build_cv_fa(shared: Path, rng: random.Random) -> tuple[list[Clip], list[Clip], list[tuple[int, str, str]], list]:
    """(training clips, dev clips, trials, held-out speakers) for Common Voice fa."""
    clips = read_commonvoice(shared, CV_FA, ["validated.tsv", "other.tsv", "invalidated.tsv"], CV_FA, "fa")
    groups = by_speaker(clips)
    ranked = sorted(groups, key=lambda s: (-len(groups[s]), s))
    eligible = sorted(s for s in ranked[FA_KEEP_LARGEST:] if len(groups[s]) >= FA_MIN_CLIPS)
    held = sorted(rng.sample(eligible, FA_HELD_OUT))
    dev_groups = {s: groups[s] for s in held}
    targets = target_pairs(dev_groups, rng, FA_MIN_CLIPS)
    trials = interleave(targets, nontarget_pairs(targets, {"fa": [c for s in held for c in groups[s]]}, rng))
    train = [c for c in clips if c.spk not in dev_groups]
    return train, _used(clips, trials), trials, held


def build_cv_multi(
    shared: Path, rng: random.Random
) -> tuple[list[Clip], list[Clip], list[tuple[int, str, str]], list[str], list[str]]:
    """(training clips, dev clips, trials, held-out languages, speakers dropped from training) for the 30 languages."""
    langs = sorted(d.name for d in (shared / CV_MULTI).iterdir() if (d / "validated.tsv").is_file())
    per_lang = {
        lang: read_commonvoice(shared, f"{CV_MULTI}/{lang}", ["validated.tsv"], f"{CV_MULTI}/{lang}", lang)
        for lang in langs
    }

    def multi_session(lang: str) -> int:
        return sum(len(v) >= MULTI_MIN_CLIPS for v in by_speaker(per_lang[lang]).values())

    eligible = [lang for lang in langs if multi_session(lang) >= LANG_MIN_SPEAKERS]
    held = sorted(rng.sample(eligible, LANGS_HELD_OUT))
    dev_clips = [c for lang in held for c in per_lang[lang]]
    dev_speakers = {c.spk for c in dev_clips}
    # A target speaker is a (speaker, language) group: cross-language targets would mix two tasks.
    groups = by_speaker(Clip(c.key, f"{c.spk}/{c.lang}", c.corpus, c.lang) for c in dev_clips)
    targets = [(_orig(a), _orig(b)) for a, b in target_pairs(groups, rng, MULTI_MIN_CLIPS)]
    pools = {lang: per_lang[lang] for lang in held}
    trials = interleave(targets, nontarget_pairs(targets, pools, rng))
    everything = [c for lang in langs for c in per_lang[lang]]
    train = [c for c in everything if c.lang not in held and c.spk not in dev_speakers]
    dropped = sorted({c.spk for c in everything if c.lang not in held and c.spk in dev_speakers})
    return train, _used(dev_clips, trials), trials, held, dropped


def _orig(c: Clip) -> Clip:
    return Clip(c.key, c.spk.split("/")[0], c.corpus, c.lang)


def _used(clips: list[Clip], trials: list[tuple[int, str, str]]) -> list[Clip]:
    keys = {k for _, a, b in trials for k in (a, b)}
    return [c for c in clips if c.key in keys]


def build_libri(shared: Path, rng: random.Random) -> tuple[list[Clip], list[Clip], list[tuple[int, str, str]], list]:
    """(training clips, dev halves, trials, held-out speakers): first half against second half of one file."""
    clips, sex = read_librispeech(shared)
    held: list[str] = []
    for s in ("F", "M"):
        held += rng.sample(sorted(c.spk for c in clips if sex.get(c.spk) == s), LIBRI_HELD_OUT // 2)
    held = sorted(held)
    halves: dict[str, tuple[Clip, Clip]] = {}
    for c in clips:
        if c.spk in held:
            info = audio_info(shared / c.key)
            mid = (info.frames // 2) / info.sample_rate
            a = Clip(f"{c.key}@0.000-{mid:.3f}", c.spk, LIBRI, "en")
            b = Clip(f"{c.key}@{mid:.3f}-{info.frames / info.sample_rate:.3f}", c.spk, LIBRI, "en")
            halves[c.spk] = (a, b)
    targets = [halves[s] for s in held]
    trials = interleave(targets, nontarget_pairs(targets, {"en": [h[1] for h in halves.values()]}, rng))
    train = [c for c in clips if c.spk not in halves]
    return train, [h for pair in targets for h in pair], trials, held


def build(shared: Path, out: Path, manifest: Path | None = None) -> dict:
    """Write the lists into `out` (and `manifest/train.jsonl` when asked); returns the summary in heldout.json."""
    shared = shared.resolve()
    if not (shared / CV_FA).is_dir():
        raise DataError(f"{shared}: not the shared data folder (no {CV_FA}/)")
    out.mkdir(parents=True, exist_ok=True)
    fa_train, fa_dev, fa_trials, fa_held = build_cv_fa(shared, random.Random(SEED))
    mu_train, mu_dev, mu_trials, langs, dropped = build_cv_multi(shared, random.Random(SEED + 1))
    li_train, li_dev, li_trials, li_held = build_libri(shared, random.Random(SEED + 2))
    train = fa_train + mu_train + li_train
    dev_speakers = {c.spk for c in fa_dev + mu_dev + li_dev}
    if dev_speakers & {c.spk for c in train}:
        raise AssertionError("a dev speaker is in the training split")
    _write_rows(out / "train.tsv", ("key", "speaker", "corpus"), [(c.key, c.spk, c.corpus) for c in train])
    dev_rows = [
        (c.key, c.spk, name) for name, dev in (("cv-fa", fa_dev), ("cv-multi", mu_dev), ("libri", li_dev)) for c in dev
    ]
    _write_rows(out / "dev.tsv", ("key", "speaker", "set"), dev_rows)
    sets = {"cv-fa": fa_trials, "cv-multi": mu_trials, "libri": li_trials}
    for name, trials in sets.items():
        (out / f"{name}.trials").write_text("".join(f"{lab} {a} {b}\n" for lab, a, b in trials), encoding="utf-8")
    summary = {
        "seed": SEED,
        "cv_fa_held_out_speakers": fa_held,
        "cv_multi_held_out_languages": langs,
        "cv_multi_speakers_dropped_from_training_languages": dropped,
        "libri_held_out_speakers": li_held,
        "counts": {name: _counts(trials, dev_rows, name) for name, trials in sets.items()}
        | {"train": {"clips": len(train), "speakers": len({c.spk for c in train})}},
    }
    (out / "heldout.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    if manifest is not None:
        utts = [Utterance(c.key.replace("/", "__"), str(shared / c.key), c.spk) for c in train]
        write_manifest(utts, manifest / "train.jsonl")
    return summary


def _counts(trials: list[tuple[int, str, str]], dev_rows: list[tuple[str, str, str]], name: str) -> dict:
    rows = [r for r in dev_rows if r[2] == name]
    n_target = sum(lab for lab, _, _ in trials)
    return {
        "speakers": len({r[1] for r in rows}),
        "clips": len(rows),
        "target": n_target,
        "nontarget": len(trials) - n_target,
    }


def _write_rows(path: Path, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    path.write_text("\t".join(header) + "\n" + "".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")


def main() -> None:
    """Command line: build the lists and print the counts."""
    here = Path(__file__).resolve().parent
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shared", type=Path, default=here.parents[2] / "shared" / "data")
    p.add_argument("--out", type=Path, default=here / "lists")
    p.add_argument("--manifest", type=Path, default=None, help="also write MANIFEST/train.jsonl (absolute paths)")
    args = p.parse_args()
    summary = build(args.shared, args.out, args.manifest)
    print(json.dumps(summary["counts"], indent=1))


if __name__ == "__main__":
    main()
