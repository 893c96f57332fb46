"""Inference: loading every saved form of a model, embedding, batching, scoring, extraction and CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from speakerforge.checkpoint_io import save_state
from speakerforge.cli import main
from speakerforge.data.audio import resample
from speakerforge.errors import CheckpointError, DataError
from speakerforge.eval.embed import extract_embeddings, list_utterances
from speakerforge.eval.embio import load_embeddings
from speakerforge.inference import chunk_waveform, group_by_frames, load_model
from speakerforge.models.modelfile import save_embedding_model
from speakerforge.models.registry import build_model

# Tiny members of every family: a few thousand to a few hundred thousand parameters, milliseconds per second of audio.
TINY = {
    "ecapa_tdnn": dict(channels=32, embedding_dim=32, attention_channels=16, se_channels=16),
    "campplus": dict(
        embedding_dim=32, growth_rate=8, bn_size=2, init_channels=32, m_channels=8, block_layers=(2, 2, 2)
    ),
    "eres2net": dict(embedding_dim=32, m_channels=8, num_blocks=(1, 1, 1, 1)),
    "resnet34": dict(embedding_dim=32, m_channels=4),
}
FEATURES = {"num_mel_bins": 80, "frame_length": 25.0, "frame_shift": 10.0, "mean_norm": True}
SR = 16000


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and do not fight other test processes for the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def build_tiny(name: str, seed: int = 0) -> torch.nn.Module:
    """A tiny model with random weights and non-trivial BatchNorm statistics (so BN folding is exercised)."""
    torch.manual_seed(seed)
    model = build_model(name, **TINY[name])
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def make_model_file(path: Path, name: str = "campplus", extra_meta: dict | None = None) -> Path:
    save_embedding_model(path, build_tiny(name), name, TINY[name], features=FEATURES, extra_meta=extra_meta)
    return path


def noise(seconds: float, seed: int = 0, sr: int = SR) -> np.ndarray:
    """Speech-like enough for a random network: noise under a slow random envelope."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    env = np.interp(np.arange(n), np.linspace(0, n, 12), rng.uniform(0.02, 0.3, 12))
    return (env * rng.standard_normal(n)).astype(np.float32)


@pytest.fixture(scope="module")
def campplus_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model_file(tmp_path_factory.mktemp("models") / "campplus.safetensors")


@pytest.fixture(scope="module")
def model(campplus_file: Path):
    return load_model(campplus_file)


def make_experiment(folder: Path, name: str = "campplus", steps: tuple[int, ...] = (10,)) -> torch.nn.Module:
    """An experiment folder as training leaves it before the end: config.yaml and checkpoints, no model file."""
    net = build_tiny(name)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"model": {"name": name, "args": TINY[name]}, "features": {**FEATURES, "dither": 1.0}}
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    state = {"backbone." + k: v for k, v in net.state_dict().items()}
    state["classifier.weight"] = torch.randn(5, 32)
    for step in steps:
        save_state(folder / "checkpoints" / f"ckpt-{step:09d}.pt", {"model": state, "progress": {"step": step}})
    return net


# ----------------------------------------------------------------------------------------------------------------
# loading
def test_model_file_checkpoint_and_experiment_folder_give_the_same_embeddings(tmp_path: Path):
    exp = tmp_path / "exp"
    make_experiment(exp)
    wav = noise(1.5)
    from_folder = load_model(exp)
    from_ckpt = load_model(exp / "checkpoints" / "ckpt-000000010.pt")
    assert from_folder.kind == from_ckpt.kind == "checkpoint"
    # training-only feature keys (dither) are dropped: inference never dithers
    assert from_ckpt.features == FEATURES
    make_model_file(exp / "model.safetensors")
    from_file = load_model(exp)
    assert from_file.kind == "model_file" and isinstance(from_file.model, torch.nn.Module)
    assert not from_file.model.training
    ref = from_file.embed(wav)
    assert ref.shape == (32,) and ref.dtype == np.float32
    np.testing.assert_allclose(from_folder.embed(wav), ref, rtol=0, atol=1e-6)
    np.testing.assert_allclose(from_ckpt.embed(wav), ref, rtol=0, atol=1e-6)


def test_experiment_folder_skips_an_unreadable_newest_checkpoint(tmp_path: Path):
    exp = tmp_path / "exp"
    make_experiment(exp, steps=(10, 20))
    newest = exp / "checkpoints" / "ckpt-000000020.pt"
    newest.write_bytes(newest.read_bytes()[:-100])  # truncated by a crash
    sm = load_model(exp)
    assert sm.source.endswith("ckpt-000000010.pt")


def test_optimized_model_gives_the_eager_models_embeddings(campplus_file: Path):
    wav = noise(2.0, seed=3)
    eager = load_model(campplus_file, optimize=False).embed(wav)
    fused = load_model(campplus_file).embed(wav)
    np.testing.assert_allclose(fused, eager, rtol=0, atol=1e-5 * np.abs(eager).max())


def test_onnx_model_loads_and_matches_torch(campplus_file: Path, model, tmp_path: Path):
    from speakerforge.export import export_onnx

    wavs = [noise(1.3, 1), noise(2.71, 2)]
    ref = np.stack([model.embed(w) for w in wavs])
    for with_fbank in (False, True):
        out = tmp_path / f"m{int(with_fbank)}.onnx"
        export_onnx(campplus_file, out, with_fbank=with_fbank)
        onnx_model = load_model(out)
        assert onnx_model.model is None and onnx_model.kind == "onnx"
        assert onnx_model.embedding_dim == 32 and onnx_model._backend.with_fbank is with_fbank
        got = onnx_model.embed_batch(wavs)
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["missing", "folder_without_model", "not_onnx", "not_a_model", "foreign_pt"])
def test_bad_model_paths_are_errors_naming_the_path(tmp_path: Path, kind: str):
    path = {
        "missing": tmp_path / "nope.safetensors",
        "folder_without_model": tmp_path,
        "not_onnx": tmp_path / "x.onnx",
        "not_a_model": tmp_path / "x.txt",
        "foreign_pt": tmp_path / "x.pt",
    }[kind]
    if kind in ("not_onnx", "not_a_model"):
        path.write_text("this is not a model\n")
    if kind == "foreign_pt":
        torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match=str(path)):
        load_model(path)


def test_checkpoint_without_config_says_where_it_looked(tmp_path: Path):
    exp = tmp_path / "exp"
    make_experiment(exp)
    (exp / "config.yaml").unlink()
    with pytest.raises(CheckpointError, match="config.yaml"):
        load_model(exp / "checkpoints" / "ckpt-000000010.pt")


# ----------------------------------------------------------------------------------------------------------------
# embedding and batching
def test_samples_after_the_last_frame_do_not_change_the_embedding(model):
    wav = noise(1.0, seed=4)
    span = model.frame_span(model.num_frames(len(wav)))
    longer = np.concatenate([wav[:span], noise(0.009, seed=9)])  # 144 more samples: still the same frames
    assert model.num_frames(len(longer)) == model.num_frames(span)
    np.testing.assert_array_equal(model.embed(longer), model.embed(wav[:span]))


@pytest.mark.parametrize("name", ["ecapa_tdnn", "campplus", "eres2net", "resnet34"])
def test_embed_batch_rows_equal_one_at_a_time(tmp_path: Path, name: str):
    sm = load_model(make_model_file(tmp_path / f"{name}.safetensors", name))
    # equal lengths, equal frame counts from different sample counts, and singletons
    lengths = [16000, 16000, 16100, 16159, 24000, 12345, 16000, 8000]
    wavs = [noise(n / SR, seed=i) for i, n in enumerate(lengths)]
    single = np.stack([sm.embed(w) for w in wavs])
    batched = sm.embed_batch(wavs, batch_size=3)
    np.testing.assert_allclose(batched, single, rtol=0, atol=2e-6 * np.abs(single).max())


def test_groups_hold_only_equal_frame_counts_unless_a_tolerance_is_given():
    frames = [100, 98, 100, 50, 100, 99, 100]
    groups = list(group_by_frames(frames, batch_size=3))
    assert [(sorted(i), n) for i, n in groups] == [([0, 2, 4], 100), ([6], 100), ([5], 99), ([1], 98), ([3], 50)]
    loose = list(group_by_frames(frames, batch_size=8, tolerance=0.05))
    assert [(sorted(i), n) for i, n in loose] == [([0, 1, 2, 4, 5, 6], 98), ([3], 50)]


def test_padding_would_change_a_stats_pooling_model_but_equal_frame_batching_does_not(model):
    """Why the batches are never padded: CAM++'s statistics pooling sees the zero frames."""
    a, b = noise(1.0, seed=1), noise(1.5, seed=2)
    alone = model.embed(a)
    padded = np.zeros(len(b), dtype=np.float32)
    padded[: len(a)] = a
    as_if_padded = model.embed(padded)
    assert np.abs(as_if_padded - alone).max() > 100 * np.abs(model.embed_batch([a, b])[0] - alone).max()


def test_arrays_at_other_rates_are_resampled_and_files_match_arrays(model, tmp_path: Path):
    wav8k = noise(1.2, seed=5, sr=8000)
    np.testing.assert_array_equal(model.embed(wav8k, sample_rate=8000), model.embed(resample(wav8k, 8000, SR)))
    path = tmp_path / "a.wav"
    sf.write(path, wav8k, 8000, subtype="FLOAT")
    np.testing.assert_allclose(model.embed(path), model.embed(wav8k, sample_rate=8000), rtol=0, atol=1e-6)
    stereo = np.stack([wav8k, wav8k])
    np.testing.assert_allclose(model.embed(stereo, 8000), model.embed(wav8k, 8000), rtol=0, atol=1e-6)


def test_too_short_and_integer_audio_are_data_errors(model):
    with pytest.raises(DataError, match="shorter than one"):
        model.embed(np.zeros(300, dtype=np.float32))
    with pytest.raises(DataError, match="float samples"):
        model.embed(np.zeros(16000, dtype=np.int16))


def test_score_is_symmetric_bounded_and_accepts_paths_arrays_and_embeddings(model, tmp_path: Path):
    a, b = noise(1.0, seed=1), noise(1.7, seed=2)
    path = tmp_path / "b.wav"
    sf.write(path, b, SR, subtype="FLOAT")
    s_ab, s_ba = model.score(a, b), model.score(b, a)
    assert s_ab == pytest.approx(s_ba, abs=1e-12)
    assert -1.0 <= s_ab <= 1.0
    assert model.score(a, path) == pytest.approx(s_ab, abs=1e-6)
    ea = model.embed(a)
    assert model.score(ea, b) == pytest.approx(s_ab, abs=1e-6)
    assert model.score(ea, a) == pytest.approx(1.0, abs=1e-6)
    assert model.score(ea, -ea) == pytest.approx(-1.0, abs=1e-12)


def test_chunks_have_equal_length_and_the_last_one_ends_at_the_end():
    wav = np.arange(10, dtype=np.float32)
    chunks = chunk_waveform(wav, 4)
    assert chunks.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [6, 7, 8, 9]]
    assert chunk_waveform(wav, 10).tolist() == [wav.tolist()]
    assert chunk_waveform(wav, 20).shape == (1, 10)


def test_embed_chunked_is_the_mean_of_the_chunk_embeddings(model):
    wav = noise(2.5, seed=6)
    expected = np.mean([model.embed(c) for c in chunk_waveform(wav, SR)], axis=0)
    np.testing.assert_allclose(model.embed_chunked(wav, 1.0), expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(model.embed_chunked(wav, 3.0), model.embed(wav))


# ----------------------------------------------------------------------------------------------------------------
# extraction
@pytest.fixture
def corpus(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """A JSONL manifest of five files (one long, one stereo at 8 kHz, one segment) and the audio each row means."""
    audio = tmp_path / "audio"
    (audio / "spk2").mkdir(parents=True)
    waves = {"spk1/a": noise(1.2, 1), "spk1/b": noise(2.0, 2), "spk2/c": noise(4.3, 3), "spk2/d": noise(1.2, 4)}
    rows, expected = [], {}
    for key, w in waves.items():
        path = audio / f"{key}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, w, SR, subtype="FLOAT")
        rows.append({"key": key, "wav": str(path), "spk": key.split("/")[0]})
        expected[key] = w
    rows.append({"key": "seg", "wav": str(audio / "spk2/c.wav"), "spk": "spk2", "start": 1.0, "end": 2.5})
    expected["seg"] = waves["spk2/c"][SR : int(2.5 * SR)]
    stereo = noise(1.0, 7, sr=8000)
    sf.write(audio / "stereo.flac", np.stack([stereo, stereo], axis=1), 8000)
    rows.append({"key": "stereo", "wav": str(audio / "stereo.flac"), "spk": "spk3"})
    expected["stereo"] = resample(sf.read(audio / "stereo.flac", dtype="float32")[0].mean(axis=1), 8000, SR)
    manifest = tmp_path / "data.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest, expected


def test_extract_writes_every_utterance_with_the_embedding_of_embed(model, corpus, tmp_path: Path):
    manifest, waves = corpus
    out = tmp_path / "out" / "emb.npz"
    stats = extract_embeddings(model, manifest, out, batch_size=4, progress=False)
    emb = load_embeddings(out)
    assert sorted(emb) == sorted(waves)
    for key, w in waves.items():
        np.testing.assert_allclose(emb[key], model.embed(w), rtol=0, atol=1e-5, err_msg=key)
    info = json.loads((tmp_path / "out" / "emb.npz.json").read_text())
    assert info["utterances"] == stats.utterances == 6
    assert info["audio_seconds"] == pytest.approx(sum(len(w) for w in waves.values()) / SR, abs=0.01)
    assert info["rtf"] == pytest.approx(info["processing_seconds"] / info["audio_seconds"])
    assert 0 < stats.model_rtf <= stats.rtf


def test_extract_chunk_mode_averages_chunks_of_long_utterances_only(model, corpus, tmp_path: Path):
    manifest, waves = corpus
    out = tmp_path / "emb.npz"
    stats = extract_embeddings(model, manifest, out, chunk=1.5, progress=False)
    emb = load_embeddings(out)
    assert stats.chunked == 2  # spk1/b (2.0 s) and spk2/c (4.3 s); the 1.5 s segment is exactly one chunk
    np.testing.assert_allclose(emb["spk2/c"], model.embed_chunked(waves["spk2/c"], 1.5), rtol=0, atol=1e-6)
    np.testing.assert_allclose(emb["spk1/a"], model.embed(waves["spk1/a"]), rtol=0, atol=1e-6)


def test_extract_ark_scp_round_trip_through_embio(model, corpus, tmp_path: Path):
    manifest, _ = corpus
    out, ark = tmp_path / "emb.npz", tmp_path / "kaldi" / "emb.ark"
    extract_embeddings(model, manifest, out, ark=ark, progress=False)
    npz, from_ark, from_scp = load_embeddings(out), load_embeddings(ark), load_embeddings(ark.with_suffix(".scp"))
    assert list(from_scp) == list(npz)
    for key in npz:
        np.testing.assert_array_equal(from_ark[key], npz[key])
        np.testing.assert_array_equal(from_scp[key], npz[key])


def test_a_folder_of_audio_files_is_data_with_relative_keys(tmp_path: Path):
    folder = tmp_path / "wavs"
    for rel in ("x/one.wav", "x/y/two.flac", "three.wav"):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(folder / rel, noise(0.5), SR)
    (folder / "notes.txt").write_text("not audio")
    assert sorted(u.key for u in list_utterances(folder)) == ["three", "x/one", "x/y/two"]
    sf.write(folder / "three.flac", noise(0.5), SR)
    with pytest.raises(DataError, match="three"):
        list_utterances(folder)


# ----------------------------------------------------------------------------------------------------------------
# commands
def _one_line_error(capsys, code: int, *needles: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    errors = [line for line in err if "error:" in line]
    assert len(errors) == 1, err
    for needle in needles:
        assert needle in errors[0]
    return errors[0]


def test_extract_command_writes_outputs_and_reports_rtf(campplus_file: Path, corpus, tmp_path: Path, capsys):
    manifest, waves = corpus
    out = tmp_path / "e.npz"
    code = main(
        [
            "extract",
            "--model",
            str(campplus_file),
            "--data",
            str(manifest),
            "--out",
            str(out),
            "--ark",
            str(tmp_path / "e.ark"),
            "--chunk",
            "2",
            "--batch-size",
            "2",
            "--threads",
            "1",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "RTF" in printed
    assert sorted(load_embeddings(out)) == sorted(waves)
    assert (tmp_path / "e.scp").is_file() and (tmp_path / "e.npz.json").is_file()


def test_extract_with_an_unreadable_file_fails_in_one_line_and_writes_nothing(
    campplus_file: Path, corpus, tmp_path: Path, capsys
):
    manifest, _ = corpus
    bad = tmp_path / "audio" / "spk1" / "b.wav"
    bad.write_bytes(b"RIFF not really a wav file")
    out_dir = tmp_path / "out"
    code = main(
        [
            "extract",
            "--model",
            str(campplus_file),
            "--data",
            str(manifest),
            "--out",
            str(out_dir / "e.npz"),
            "--ark",
            str(out_dir / "e.ark"),
        ]
    )
    _one_line_error(capsys, code, "b.wav", "data.jsonl:2")
    assert not out_dir.exists() or list(out_dir.iterdir()) == []


@pytest.mark.parametrize("kind", ["missing", "not_onnx", "no_model_dir"])
def test_commands_with_a_bad_model_fail_in_one_line(tmp_path: Path, capsys, kind: str):
    wav = tmp_path / "a.wav"
    sf.write(wav, noise(1.0), SR)
    model = {
        "missing": tmp_path / "nothing" / "model.safetensors",
        "not_onnx": tmp_path / "fake.onnx",
        "no_model_dir": tmp_path / "empty_exp",
    }[kind]
    if kind == "not_onnx":
        model.write_bytes(b"\x00garbage, not a protobuf")
    if kind == "no_model_dir":
        model.mkdir()
    out = tmp_path / "o.npz"
    for argv in (
        ["verify", "--model", str(model), str(wav), str(wav)],
        ["embed", "--model", str(model), str(wav), "--out", str(out)],
        ["extract", "--model", str(model), "--data", str(tmp_path), "--out", str(out)],
        ["export", "--model", str(model), "--onnx", str(tmp_path / "x.onnx")],
    ):
        _one_line_error(capsys, main(argv), str(model))
    assert not out.exists() and not (tmp_path / "x.onnx").exists()


def test_verify_uses_the_models_threshold_else_half_with_a_note(tmp_path: Path, capsys):
    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    sf.write(a, noise(1.0, 1), SR)
    sf.write(b, noise(1.3, 2), SR)
    plain = make_model_file(tmp_path / "plain.safetensors")
    assert main(["verify", "--model", str(plain), str(a), str(b)]) == 0
    captured = capsys.readouterr()
    score = float(captured.out.split()[1])
    assert "threshold 0.5000, default" in captured.out and "note:" in captured.err
    assert ("accept" if score >= 0.5 else "reject") in captured.out
    strict = make_model_file(tmp_path / "strict.safetensors", extra_meta={"threshold": 1.0})
    assert main(["verify", "--model", str(strict), str(a), str(b)]) == 0
    captured = capsys.readouterr()
    assert "reject" in captured.out and "threshold 1.0000, model" in captured.out and "note:" not in captured.err
    assert main(["verify", "--model", str(strict), str(a), str(b), "--threshold", "-1"]) == 0
    assert "accept" in capsys.readouterr().out


def test_embed_command_prints_a_summary_or_saves(campplus_file: Path, tmp_path: Path, capsys):
    files = []
    for i in range(2):
        files.append(tmp_path / f"f{i}.wav")
        sf.write(files[-1], noise(1.0 + i, i), SR)
    assert main(["embed", "--model", str(campplus_file), *map(str, files)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all("dim=32" in line for line in lines)
    out = tmp_path / "e.npz"
    assert main(["embed", "--model", str(campplus_file), *map(str, files), "--out", str(out)]) == 0
    emb = load_embeddings(out)
    assert sorted(emb) == sorted(str(f.with_suffix("")) for f in files)
