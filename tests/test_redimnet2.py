"""ReDimNet2 as WeSpeaker releases it: its tfmel features equal WeSpeaker's frontend, and a converted release embeds
a waveform as WeSpeaker's frontend + model do (PyTorch and ONNX), through `load_model` alone.

The reference is `tests/ws_redimnet2.py` (transcribed from wenet-e2e/wespeaker)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from speakerforge.cli import main
from speakerforge.data.features import FeatureSpec
from speakerforge.export import ExportError, export_onnx
from speakerforge.inference import load_model
from speakerforge.models.zoo import find
from tests.test_model_zoo import redimnet2_reference
from tests.ws_redimnet2 import TFMelBanks

TFMEL = FeatureSpec(num_mel_bins=72, kind="tfmel")
ROW = "wespeaker/voxceleb_redimnet2_B6_LM"


def _speechlike(samples: int, seed: int = 0) -> torch.Tensor:
    """Noise under a slow envelope with a DC offset: a dynamic range nearer speech than flat noise."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / 16000
    env = 0.05 + 0.4 * torch.sin(2 * torch.pi * 3 * t).abs()
    return (torch.rand(samples, generator=g) * 2 - 1) * env + 0.01


def test_tfmel_features_equal_wespeakers_frontend_and_own_their_frame_geometry():
    ref = TFMelBanks(n_mels=72, norm_signal=True, do_preemph=True, eps=1e-8).eval()
    for samples in (240, 401, 16000, 16079, 16080, 24321):
        wave = _speechlike(samples).unsqueeze(0)
        want = ref(wave).transpose(1, 2)  # [B, F, T] -> [B, T, F]
        got = TFMEL(wave)
        assert got.shape == want.shape == (1, TFMEL.num_frames(samples), 72), samples
        assert (got - want).abs().max().item() < 2e-4, samples
    for frames in (1, 2, 7, 300):
        span = TFMEL.frame_span(frames)
        assert TFMEL.num_frames(span) == frames and TFMEL.num_frames(span - 1) == frames - 1
    assert TFMEL.num_frames(239) == 0 and TFMEL(torch.zeros(1, 239)).shape == (1, 0, 72)


def test_feature_kind_is_stored_only_when_not_kaldi_and_checked():
    assert "kind" not in FeatureSpec().to_meta()  # every fbank model's metadata stays as it was
    assert TFMEL.to_meta()["kind"] == "tfmel" and FeatureSpec.from_meta(TFMEL.to_meta()) == TFMEL
    assert FeatureSpec.from_meta({"num_mel_bins": 80}).kind == "kaldi"
    with pytest.raises(ValueError, match="feature kind 'mfcc': choose from kaldi, tfmel"):
        FeatureSpec(kind="mfcc")
    with pytest.raises(ValueError, match="dither is a Kaldi fbank setting"):
        TFMEL(torch.zeros(1, 800), dither=1.0)


def test_a_converted_release_embeds_a_waveform_as_wespeaker_does_in_torch_and_onnx(tmp_path, capsys):
    entry = find(ROW)
    ref = redimnet2_reference(entry.embedding_dim)
    torch.save(ref.checkpoint, tmp_path / "avg_model.pt")
    out = tmp_path / "redimnet2.safetensors"
    sets = [x for k, v in ref.sets.items() for x in ("--set", f"model.args.{k}={v}")]
    assert main(["convert", "--model-id", ROW, *sets, str(tmp_path / "avg_model.pt"), str(out)]) == 0
    frontend = TFMelBanks(n_mels=72, norm_signal=True, do_preemph=True, eps=1e-8).eval()
    wave = _speechlike(TFMEL.frame_span(200), seed=3)  # exactly 200 frames: nothing is trimmed
    with torch.no_grad():
        want = ref.forward(frontend(wave[None]).transpose(1, 2))[0].numpy()

    model = load_model(out)
    assert model.features["kind"] == "tfmel" and model.num_frames(wave.shape[0]) == 200
    got = model.embed(wave.numpy())
    assert np.abs(got - want).max() < 1e-4 * max(1.0, float(np.abs(want).max()))

    report = export_onnx(out, tmp_path / "redimnet2.onnx")
    assert report.worst < 1e-4
    onnx_model = load_model(tmp_path / "redimnet2.onnx")
    assert np.abs(onnx_model.embed(wave.numpy()) - want).max() < 1e-4 * max(1.0, float(np.abs(want).max()))
    with pytest.raises(ExportError, match="reads tfmel features; export without --with-fbank"):
        export_onnx(out, tmp_path / "with_fbank.onnx", with_fbank=True)
    assert not (tmp_path / "with_fbank.onnx").exists()


def test_converting_by_architecture_alone_keeps_the_releases_features(tmp_path):
    ref = redimnet2_reference(192)
    torch.save(ref.checkpoint, tmp_path / "avg_model.pt")
    out = tmp_path / "by_arch.safetensors"
    args = ["convert", "--from", "wespeaker", "--arch", "redimnet2", "--set", "model.args.channels=32"]
    assert main([*args, str(tmp_path / "avg_model.pt"), str(out)]) == 0
    assert load_model(out).features == FeatureSpec.from_meta(find(ROW).features).to_meta()


@pytest.mark.parametrize("variant", ["b0", "b1", "b2", "b3", "b4", "b5"])
def test_every_variant_has_wespeakers_tensors_and_the_small_ones_its_embeddings(variant):
    from speakerforge.models.redimnet import ReDimNet2
    from tests.test_model_zoo import _randomize
    from tests.ws_redimnet2 import variant as ws_variant

    with torch.device("meta"):
        ref_shapes = {k: v.shape for k, v in ws_variant(variant).state_dict().items()}
        ours_shapes = {k: v.shape for k, v in ReDimNet2(variant=variant).state_dict().items()}
    assert ours_shapes == ref_shapes
    if variant in ("b0", "b2"):  # b2 divides frequency by 3 in one stage
        ref = _randomize(ws_variant(variant))
        ours = ReDimNet2(variant=variant).eval()
        ours.load_state_dict(ref.state_dict(), strict=True)
        x = torch.randn(2, 101, 72, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            want = ref(x.transpose(1, 2).contiguous())
            assert (ours(x) - want).abs().max().item() < 1e-4 * max(1.0, want.abs().max().item())
