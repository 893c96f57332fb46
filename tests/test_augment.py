"""Augmentation: exact SNR, aligned reverberation, speed perturbation, SpecAugment, determinism, clear errors."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speakerforge.config import AugmentConfig
from speakerforge.data.augment import (
    Augmenter,
    NoiseBank,
    NoiseItem,
    RirBank,
    add_babble,
    add_noise,
    check_augment,
    reverberate,
    spec_augment,
    speed_perturb,
    write_audio_list,
)
from speakerforge.data.corpora.noise import (
    make_noise_bank,
    make_synthetic_rirs,
    prepare,
    prepare_musan,
    prepare_rirs,
    synthetic_rir,
)
from speakerforge.data.sampling import speed_label
from speakerforge.errors import ConfigError, DataError

SR = 16000


def _snr_db(clean: np.ndarray, mixed: np.ndarray) -> float:
    noise = mixed.astype(np.float64) - clean.astype(np.float64)
    return float(10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(noise**2)))


def _speechlike(seed: int, seconds: float = 1.0) -> np.ndarray:
    """Amplitude-modulated noise: bursts and pauses, like speech at the level of powers."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * np.arange(n) / SR)
    return (0.1 * envelope * rng.standard_normal(n)).astype(np.float32)


@pytest.fixture(scope="module")
def banks(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("augbanks")
    make_noise_bank(root / "noise", 5, seed=3, duration=1.0)
    make_synthetic_rirs(root / "rirs", 4, seed=3)
    return root / "noise", root / "rirs"


# ------------------------------------------------------------------------------------------------ noise


@pytest.mark.parametrize("snr", [0.0, 5.0, 13.0, 20.0])
def test_add_noise_mixes_at_target_snr_within_0_1_db(snr):
    clean = _speechlike(0)
    long_noise = np.random.default_rng(1).standard_normal(3 * SR).astype(np.float32) * 0.3
    short_noise = np.random.default_rng(2).standard_normal(SR // 7).astype(np.float32)
    for noise in (long_noise, short_noise):
        mixed = add_noise(clean, noise, snr, np.random.default_rng(0))
        assert mixed.dtype == np.float32 and len(mixed) == len(clean)
        assert abs(_snr_db(clean, mixed) - snr) < 0.1


def test_add_noise_loops_short_noise_from_a_random_offset():
    clean = _speechlike(0, 0.5)
    noise = np.random.default_rng(3).standard_normal(1000)
    added = add_noise(clean, noise, 10.0, np.random.default_rng(7)) - clean
    period = added[:1000]
    np.testing.assert_allclose(added[1000:2000], period, atol=1e-6)  # looped
    at_zero = add_noise(clean, noise, 10.0) - clean  # no rng: offset 0
    assert not np.allclose(period, at_zero[:1000], atol=1e-6)


def test_add_noise_leaves_silent_speech_and_silent_noise_alone():
    silent = np.zeros(SR, dtype=np.float32)
    noise = np.random.default_rng(0).standard_normal(SR)
    assert np.array_equal(add_noise(silent, noise, 5.0), silent)
    clean = _speechlike(1)
    assert np.array_equal(add_noise(clean, np.zeros(500), 5.0), clean)


def test_babble_adds_each_talker_at_its_own_snr():
    clean = _speechlike(0)
    talkers = [np.random.default_rng(10 + k).standard_normal(2 * SR) for k in range(3)]
    mixed = add_babble(clean, talkers, [15.0, 15.0, 15.0], np.random.default_rng(0))
    # Three independent talkers at 15 dB each: about 15 - 10 log10(3) dB in total.
    assert abs(_snr_db(clean, mixed) - (15.0 - 10 * np.log10(3))) < 0.3


def test_noise_bank_finds_musan_categories_and_loads_lazily(banks):
    noise_dir, _ = banks
    bank = NoiseBank.from_path(noise_dir, cache_size=2)
    assert bank.categories == ("noise", "music")
    assert len(bank.load) == 0  # nothing decoded at construction
    rng = np.random.default_rng(0)
    clean = _speechlike(0)
    for _ in range(6):
        out = bank.add_random(clean, rng, category="noise")
        assert 0.0 - 0.1 < _snr_db(clean, out) < 15.0 + 0.1
    assert len(bank.load) <= 2


def test_noise_bank_mixes_babble_from_speech_folder(tmp_path):
    (tmp_path / "speech").mkdir()
    for k in range(4):
        sf.write(tmp_path / "speech" / f"s{k}.wav", _speechlike(20 + k, 0.5), SR)
    bank = NoiseBank.from_path(tmp_path)
    assert bank.categories == ("speech",)
    clean = _speechlike(0)
    for seed in range(5):
        snr = _snr_db(clean, bank.add_random(clean, np.random.default_rng(seed)))
        # 3-7 talkers, each at 13-20 dB.
        assert 13.0 - 10 * np.log10(7) - 1.0 < snr < 20.0 + 0.5


# ------------------------------------------------------------------------------------------------ reverb


def test_reverberate_with_delayed_delta_is_identity():
    clean = _speechlike(0)
    rir = np.zeros(800, dtype=np.float32)
    rir[123] = 0.3
    out = reverberate(clean, rir)
    assert len(out) == len(clean) and out.dtype == np.float32
    np.testing.assert_allclose(out, clean, atol=1e-6)


def test_reverberate_keeps_length_alignment_and_energy():
    clean = np.random.default_rng(0).standard_normal(3 * SR).astype(np.float32) * 0.1
    for seed in range(4):
        rir, _ = synthetic_rir(np.random.default_rng([9, seed]))
        wet = reverberate(clean, rir)
        assert len(wet) == len(clean)
        lags = np.arange(-50, 51)
        xcorr = [
            np.dot(clean[max(0, -k) : len(clean) - max(0, k)], wet[max(0, k) : len(wet) - max(0, -k)]) for k in lags
        ]
        assert lags[int(np.argmax(xcorr))] == 0
        ratio = np.sum(wet.astype(np.float64) ** 2) / np.sum(clean.astype(np.float64) ** 2)
        assert 0.7 < ratio < 1.3  # unit-energy RIR: level kept up to the truncated tail


def test_reverberate_rejects_silent_rir():
    with pytest.raises(DataError, match="silent"):
        reverberate(_speechlike(0), np.zeros(100))


# ------------------------------------------------------------------------------------------------- speed


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_perturb_changes_length_by_one_over_factor_and_pitch_by_factor(factor):
    t = np.arange(2 * SR) / SR
    tone = (0.5 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
    out = speed_perturb(tone, factor)
    assert abs(len(out) - len(tone) / factor) <= 1
    spectrum = np.abs(np.fft.rfft(out[1000:-1000] * np.hanning(len(out) - 2000)))
    peak_hz = np.argmax(spectrum) * SR / (len(out) - 2000)
    assert abs(peak_hz - 440.0 * factor) < 2.0
    assert np.array_equal(speed_perturb(tone, 1.0), tone)


def test_speed_label_makes_each_speed_a_new_block_of_classes():
    assert [speed_label(3, s, 10) for s in range(3)] == [3, 13, 23]
    with pytest.raises(ValueError):
        speed_label(10, 0, 10)


# ------------------------------------------------------------------------------------------- SpecAugment


def _runs(mask_row: np.ndarray) -> list[int]:
    """Lengths of the runs of True."""
    edges = np.diff(np.concatenate([[0], mask_row.astype(int), [0]]))
    return list(np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1))


def test_spec_augment_masks_bands_of_the_requested_widths():
    feats = torch.ones(64, 50, 40)
    out = spec_augment(
        feats, torch.Generator().manual_seed(0), num_freq_masks=1, max_freq_width=6, num_time_masks=1, max_time_width=9
    )
    assert torch.equal(feats, torch.ones(64, 50, 40))  # input untouched
    freq_widths, time_widths = [], []
    for item in out.numpy():
        zero = item == 0
        freq_masked = zero.all(axis=0)
        time_masked = zero.all(axis=1)
        assert np.array_equal(zero, freq_masked[None, :] | time_masked[:, None])  # only whole bands or spans
        (fw,), (tw,) = _runs(freq_masked), _runs(time_masked)
        freq_widths.append(fw)
        time_widths.append(tw)
    assert min(freq_widths) >= 1 and max(freq_widths) == 6
    assert min(time_widths) >= 1 and max(time_widths) == 9


def test_spec_augment_is_deterministic_for_a_seeded_generator():
    feats = torch.randn(4, 30, 20)
    a = spec_augment(feats, torch.Generator().manual_seed(5), 2, 5, 2, 8)
    b = spec_augment(feats, torch.Generator().manual_seed(5), 2, 5, 2, 8)
    c = spec_augment(feats, torch.Generator().manual_seed(6), 2, 5, 2, 8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    single = spec_augment(feats[0], torch.Generator().manual_seed(5), 2, 5, 2, 8)
    assert single.shape == (30, 20)


def test_spec_augment_fills_with_mean_on_request_and_does_nothing_without_masks():
    feats = torch.full((20, 10), 3.0)
    out = spec_augment(feats, torch.Generator().manual_seed(0), 1, 4, 1, 4, fill="mean")
    assert torch.equal(out, feats)
    none = spec_augment(feats, torch.Generator().manual_seed(0), 0, 4, 0, 4)
    assert torch.equal(none, feats)


# ------------------------------------------------------------------------------------------------ policy


def _run(augmenter: Augmenter, seed: int, count: int = 24) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [augmenter(_speechlike(k), rng) for k in range(count)]


def test_augmenter_same_seed_gives_identical_output_and_other_seed_differs(banks):
    noise_dir, rir_dir = banks
    config = AugmentConfig(
        noise_dir=str(noise_dir), rir_dir=str(rir_dir), noise_prob=0.3, reverb_prob=0.3, both_prob=0.3
    )
    first = _run(Augmenter(config), 11)
    second = _run(Augmenter(config), 11)  # fresh caches: what is cached must not change the draws
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    other = _run(Augmenter(config), 12)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other))
    changed = sum(not np.array_equal(out, _speechlike(k)) for k, out in enumerate(first))
    assert 12 <= changed < 24  # p = 0.9: most, not all


def test_augmenter_resumes_bit_exactly_from_a_saved_rng_state(banks):
    noise_dir, rir_dir = banks
    augmenter = Augmenter(AugmentConfig(noise_dir=str(noise_dir), rir_dir=str(rir_dir)))
    rng = np.random.default_rng(4)
    wavs = [_speechlike(k) for k in range(10)]
    head = [augmenter(w, rng) for w in wavs[:5]]
    state = rng.bit_generator.state
    tail = [augmenter(w, rng) for w in wavs[5:]]
    resumed_rng = np.random.default_rng()
    resumed_rng.bit_generator.state = state
    resumed = [Augmenter(augmenter.config)(w, resumed_rng) for w in wavs[5:]]
    assert len(head) == 5 and all(np.array_equal(a, b) for a, b in zip(tail, resumed))


def test_augmenter_without_folders_is_off():
    wav = _speechlike(0)
    assert np.array_equal(Augmenter(AugmentConfig())(wav, np.random.default_rng(0)), wav)


# ------------------------------------------------------------------------------------------------ errors


def test_missing_folders_name_the_config_key(tmp_path):
    with pytest.raises(DataError, match=r"augment\.noise_dir"):
        Augmenter(AugmentConfig(noise_dir=str(tmp_path / "nope"), noise_prob=0.5, reverb_prob=0, both_prob=0))
    with pytest.raises(DataError, match=r"augment\.rir_dir"):
        Augmenter(AugmentConfig(rir_dir=str(tmp_path / "nope"), noise_prob=0, reverb_prob=0.5, both_prob=0))


def test_empty_folders_name_the_config_key(tmp_path):
    (tmp_path / "empty" / "noise").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("no audio here")
    with pytest.raises(DataError, match=r"augment\.noise_dir.*no audio files"):
        Augmenter(AugmentConfig(noise_dir=str(tmp_path / "empty"), noise_prob=0.5, reverb_prob=0, both_prob=0))
    with pytest.raises(DataError, match=r"train\.aug\.rir_dir.*no audio files"):
        Augmenter(
            AugmentConfig(rir_dir=str(tmp_path / "empty"), noise_prob=0, reverb_prob=0.5, both_prob=0),
            prefix="train.aug",
        )


def test_config_errors_name_the_key(banks):
    noise_dir, _ = banks
    with pytest.raises(ConfigError, match=r"augment\.rir_dir is not set"):
        Augmenter(AugmentConfig(noise_dir=str(noise_dir)))  # reverb_prob and both_prob default to 0.2
    with pytest.raises(ConfigError, match=r"> 1"):
        check_augment(AugmentConfig(noise_prob=0.5, reverb_prob=0.5, both_prob=0.5))
    with pytest.raises(ConfigError, match=r"augment\.noise_snr=\[15\.0, 0\.0\]: low must not exceed high"):
        check_augment(AugmentConfig(noise_snr=[15.0, 0.0]))


# --------------------------------------------------------------------------------------- builders, layouts


def test_synthetic_rirs_are_deterministic_and_peak_at_the_direct_path(tmp_path):
    a = make_synthetic_rirs(tmp_path / "a", 3, seed=7)
    b = make_synthetic_rirs(tmp_path / "b", 3, seed=7)
    c = make_synthetic_rirs(tmp_path / "c", 3, seed=8)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert a[0].read_bytes() != c[0].read_bytes()
    for path in a:
        h, sr = sf.read(path, dtype="float32")
        assert sr == SR and 0.2 * SR <= len(h) <= 1.02 * SR
        peak = int(np.argmax(np.abs(h)))
        assert 0.002 * SR <= peak < 0.02 * SR and abs(h[peak] - 0.9) < 1e-6
        assert np.abs(h[-200:]).max() < 0.01  # decayed by the end


def test_noise_bank_builder_is_deterministic_and_makes_babble_material(tmp_path, monkeypatch):
    speech = tmp_path / "utts"
    speech.mkdir()
    utts = []
    for k in range(3):
        sf.write(speech / f"u{k}.wav", _speechlike(30 + k, 2.0), SR)
        utts.append(types.SimpleNamespace(path=str(speech / f"u{k}.wav"), start=0.5, end=None))
    fake = types.ModuleType("speakerforge.data.manifest")
    fake.read_manifest = lambda path: utts
    monkeypatch.setitem(sys.modules, "speakerforge.data.manifest", fake)

    a = make_noise_bank(tmp_path / "a", 5, seed=1, speech_manifest="m.csv", duration=1.0)
    b = make_noise_bank(tmp_path / "b", 5, seed=1, speech_manifest="m.csv", duration=1.0)
    assert [Path(i.path).read_bytes() for i in a] == [Path(i.path).read_bytes() for i in b]
    assert sorted({i.category for i in a}) == ["music", "noise", "speech"]
    assert sum(i.category == "speech" for i in a) == 3
    assert all(sf.info(i.path).frames == SR for i in a)
    assert NoiseBank.from_path(tmp_path / "a").categories == ("noise", "music", "speech")
    # Rebuilding smaller leaves no stale files behind.
    make_noise_bank(tmp_path / "a", 2, seed=1, duration=1.0)
    assert len(NoiseBank.from_path(tmp_path / "a")) == 2


def _tiny_wav(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.random.default_rng(0).standard_normal(400).astype(np.float32) * 0.1, SR)


def test_prepare_reads_musan_and_rirs_noises_layouts_into_lists_the_banks_accept(tmp_path):
    musan = tmp_path / "musan"
    for rel in ("noise/free-sound/n1.wav", "music/fma/m1.wav", "speech/librivox/s1.wav", "speech/us-gov/s2.wav"):
        _tiny_wav(musan / rel)
    (musan / "README").write_text("x")
    items = prepare_musan(tmp_path)  # the parent of musan/ works too
    assert sorted(i.category for i in items) == ["music", "noise", "speech", "speech"]

    rirs = tmp_path / "RIRS_NOISES"
    for rel in (
        "simulated_rirs/smallroom/Room001/Room001-00001.wav",
        "simulated_rirs/largeroom/Room002/Room002-00003.wav",
        "real_rirs_isotropic_noises/air_type1_air_binaural_lecture_1_1.wav",
        "real_rirs_isotropic_noises/RVB2014_type1_noise_largeroom1_1.wav",
        "pointsource_noises/noise-free-sound-0001.wav",
    ):
        _tiny_wav(rirs / rel)
    (rirs / "real_rirs_isotropic_noises" / "rir_list").write_text(
        "--rir-id air_type1_air_binaural_lecture_1_1 --room-id air_type1_air_binaural_lecture "
        "RIRS_NOISES/real_rirs_isotropic_noises/air_type1_air_binaural_lecture_1_1.wav\n"
    )
    names = sorted(p.name for p in prepare_rirs(rirs))
    assert names == ["Room001-00001.wav", "Room002-00003.wav", "air_type1_air_binaural_lecture_1_1.wav"]

    musan_csv = prepare("musan", tmp_path, tmp_path / "lists")
    rirs_csv = prepare("rirs", tmp_path, tmp_path / "lists")
    assert NoiseBank.from_path(musan_csv).categories == ("noise", "music", "speech")
    assert len(RirBank.from_path(rirs_csv)) == 3
    with pytest.raises(DataError, match="unknown noise category 'rir'"):
        NoiseBank.from_path(rirs_csv)  # lists swapped by mistake
    with pytest.raises(DataError, match="MUSAN layout"):
        prepare_musan(rirs)


def test_relative_paths_in_a_list_are_taken_from_its_folder(tmp_path):
    _tiny_wav(tmp_path / "n" / "a.wav")
    write_audio_list([NoiseItem("n/a.wav", "noise")], tmp_path / "list.csv")
    bank = NoiseBank.from_path(tmp_path / "list.csv")
    assert len(bank.load(0)) == 400
