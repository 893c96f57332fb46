"""W2V-BERT 2.0 + adapter MFA as WeSpeaker releases it: our features equal Hugging Face's SeamlessM4T extractor, a
converted release (plain or a stage-1 LoRA checkpoint) embeds a waveform as WeSpeaker's frontend + model do, for
odd and even frame counts, in PyTorch and ONNX, one at a time and batched.

The reference is `tests/ws_w2vbert.py` (transcribed from transformers and wenet-e2e/wespeaker)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from speakerforge.cli import main
from speakerforge.data.features import FeatureSpec
from speakerforge.export import export_onnx
from speakerforge.inference import load_model
from speakerforge.models.zoo import find
from tests.test_model_zoo import W2VBERT_TINY, w2vbert_reference
from tests.test_redimnet2 import _speechlike
from tests.ws_w2vbert import SeamlessM4TFeatureExtractor, embed_waves

MVN = FeatureSpec(var_norm=True)
ROW = "wespeaker/voxceleb_voxblink2_w2v_bert2_lora_adapterMFA_lm"
TINY = [f"model.args.{k}={v}" for k, v in W2VBERT_TINY.items()]  # the reference's width, as --set overrides
TINY_FLAGS = [x for s in TINY for x in ("--set", s)]


def _close(got: np.ndarray, want: np.ndarray, tol: float = 1e-4) -> bool:
    return float(np.abs(got - want).max()) < tol * max(1.0, float(np.abs(want).max()))


def test_features_equal_the_seamless_m4t_extractor_and_var_norm_is_stored_only_when_set():
    extractor = SeamlessM4TFeatureExtractor()
    for samples in (16000, 16160, 24321):  # 98, 99 (odd) and 150 frames
        wave = _speechlike(samples, seed=samples)
        want = extractor.normalized([wave.numpy()])[0]
        got = MVN(wave).numpy()
        assert got.shape == want.shape == (MVN.num_frames(samples), 80), samples
        assert np.abs(got - want).max() < 1e-4, samples
    # one frame has no spread: the extractor divides its zero by NaN (ddof=1); ours leaves the zero
    assert MVN(_speechlike(400)).abs().max().item() == 0.0
    assert MVN.to_meta()["var_norm"] is True and "var_norm" not in FeatureSpec().to_meta()
    assert FeatureSpec.from_meta(MVN.to_meta()) == MVN and FeatureSpec.from_meta(find(ROW).features) == MVN
    with pytest.raises(ValueError, match="var_norm normalises the variance after the mean: set mean_norm true"):
        FeatureSpec(mean_norm=False, var_norm=True)


def _converted(tmp_path, lora: bool = False):
    ref = w2vbert_reference(256, lora=lora)
    torch.save(ref.checkpoint, tmp_path / "avg_model.pt")
    out = tmp_path / "w2vbert.safetensors"
    assert main(["convert", "--model-id", ROW, *TINY_FLAGS, str(tmp_path / "avg_model.pt"), str(out)]) == 0
    return ref, out


def _reference_embedding(ref, wave: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return embed_waves(ref.net, wave[None])[0].numpy()


@pytest.mark.parametrize("lora", [False, True], ids=["merged", "lora"])
def test_a_converted_release_embeds_a_waveform_as_wespeaker_does(tmp_path, lora):
    ref, out = _converted(tmp_path, lora)
    model = load_model(out)
    assert model.features == MVN.to_meta()
    waves = [_speechlike(MVN.frame_span(n), seed=n) for n in (150, 151)]  # even, odd: a masked stacked frame
    for wave in waves:
        assert _close(model.embed(wave.numpy()), _reference_embedding(ref, wave))
    if lora:
        return
    # batched (same length) and in ONNX, with the fbank and normalisation inside the graph or outside
    batch = model.embed_batch([w.numpy() for w in waves * 2], batch_size=4)
    for row, wave in zip(batch, waves * 2):
        assert _close(row, _reference_embedding(ref, wave))
    for with_fbank in (False, True):
        path = tmp_path / f"w2vbert{int(with_fbank)}.onnx"
        assert export_onnx(out, path, with_fbank=with_fbank).worst < 1e-4
        onnx_model = load_model(path)
        for wave in waves:
            assert _close(onnx_model.embed(wave.numpy()), _reference_embedding(ref, wave))


@pytest.mark.parametrize("half", ["B", "A"])
def test_a_lora_checkpoint_missing_half_a_pair_is_refused_by_name(tmp_path, capsys, half):
    ref = w2vbert_reference(256, lora=True)
    broken = {k: v for k, v in ref.checkpoint.items() if f"layers.1.self_attn.linear_v.lora_{half}" not in k}
    torch.save(broken, tmp_path / "avg_model.pt")
    code = main(
        ["convert", "--model-id", ROW, *TINY_FLAGS, str(tmp_path / "avg_model.pt"), str(tmp_path / "o.safetensors")]
    )
    assert code != 0 and not (tmp_path / "o.safetensors").exists()
    assert f"encoder.layers.1.self_attn.linear_v come without their lora_{half}" in capsys.readouterr().err


def test_a_model_over_the_single_file_limit_exports_with_its_weights_beside_the_graph(tmp_path, monkeypatch):
    import speakerforge.export as export

    ref, out = _converted(tmp_path)
    monkeypatch.setattr(export, "SINGLE_FILE_LIMIT", 1000)  # the tiny model stands in for the 2.3 GB release
    folder = tmp_path / "onnx"
    report = export_onnx(out, folder / "w2vbert.onnx")
    assert report.worst < 1e-4
    assert sorted(p.name for p in folder.iterdir()) == ["w2vbert.onnx", "w2vbert.onnx.data"]  # no scratch left
    assert (folder / "w2vbert.onnx").stat().st_size < (folder / "w2vbert.onnx.data").stat().st_size
    wave = _speechlike(MVN.frame_span(151), seed=4)
    assert _close(load_model(folder / "w2vbert.onnx").embed(wave.numpy()), _reference_embedding(ref, wave))


def test_finetune_with_the_encoder_frozen_trains_only_the_mfa_head(tmp_path):
    """The practical CPU setting for a 580M encoder: `--freeze backbone.encoder` keeps every encoder weight of the
    release and trains the adapters, pooling and bottleneck (checked by the update-integrity check and here)."""
    from safetensors.torch import load_file

    from speakerforge.checkpoint_io import load_model_file
    from tests.test_finetune import BASE_SETS
    from tests.trainutil import TINY_MODEL, tiny_corpus

    ref, out = _converted(tmp_path)
    corpus = tiny_corpus(tmp_path / "b", n_speakers=4, seed=2, prefix="b")
    exp = tmp_path / "exp"
    args = ["--quiet", "finetune", "--init", str(tmp_path / "avg_model.pt"), "--model-id", ROW, "--exp", str(exp)]
    args += ["--data", str(corpus), "--freeze", "backbone.encoder"]
    sets = [*BASE_SETS[len(TINY_MODEL) :], "data.batch_size=4", *TINY]
    assert main(args + [x for s in sets for x in ("--set", s)]) == 0
    before = load_file(str(out))
    after, _ = load_model_file(exp / "model.safetensors")
    encoder = [k for k in before if k.startswith("backbone.encoder.")]
    head = [k for k in before if k.startswith(("backbone.adapter_layers.", "backbone.bottleneck."))]
    assert encoder and head
    assert all(torch.equal(before[k], after[k]) for k in encoder)
    assert all(not torch.equal(before[k], after[k]) for k in head)
