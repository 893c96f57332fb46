"""`speakerforge convert` on state dicts saved from speakerlab's models: same embeddings after conversion."""

from __future__ import annotations

import pytest
import torch

from speakerforge.cli import main
from speakerforge.models.modelfile import load_embedding_model


def _randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + (0.75 if "running_var" in name else -0.25))
    return model.eval()


CASES = [
    ("campplus", "speakerlab.models.campplus.DTDNN", "CAMPPlus", dict(feat_dim=80, embedding_size=192), []),
    ("eres2net", "speakerlab.models.eres2net.ERes2Net", "ERes2Net", dict(feat_dim=80, embedding_size=192), []),
    (
        "ecapa_tdnn",
        "speakerlab.models.ecapa_tdnn.ECAPA_TDNN",
        "ECAPA_TDNN",
        dict(input_size=80, channels=[64, 64, 64, 64, 192], attention_channels=16, se_channels=16, lin_neurons=32),
        [
            "model.args.channels=64",
            "model.args.attention_channels=16",
            "model.args.se_channels=16",
            "model.args.embedding_dim=32",
        ],
    ),
]


@pytest.mark.parametrize("arch,modpath,cls,kwargs,sets", CASES, ids=[c[0] for c in CASES])
def test_convert_speakerlab_state_dict_gives_same_embeddings(tmp_path, arch, modpath, cls, kwargs, sets):
    mod = pytest.importorskip(modpath)
    ref = _randomize(getattr(mod, cls)(**kwargs), seed=3)
    torch.save({"model": ref.state_dict()}, tmp_path / "in.ckpt")
    args = ["convert", "--from", "3dspeaker", "--arch", arch]
    for s in sets:
        args += ["--set", s]
    assert main([*args, str(tmp_path / "in.ckpt"), str(tmp_path / "out.safetensors")]) == 0
    ours, meta, _ = load_embedding_model(tmp_path / "out.safetensors")
    x = torch.randn(2, 120, 80)
    with torch.no_grad():
        a, b = ours(x), ref(x)
    # random weights give large activations: compare relative to the embedding's scale
    assert (a - b).abs().max().item() <= 1e-5 * b.abs().max().item() + 1e-5
    assert meta["model"]["name"] == arch


def test_convert_reports_mismatched_keys(tmp_path, capsys):
    torch.save({"blocks.0.conv.weight": torch.zeros(2, 2)}, tmp_path / "bad.ckpt")
    code = main(
        [
            "convert",
            "--from",
            "3dspeaker",
            "--arch",
            "campplus",
            str(tmp_path / "bad.ckpt"),
            str(tmp_path / "o.safetensors"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "missing" in err and "unexpected" in err
    assert not (tmp_path / "o.safetensors").exists()


def test_inspect_describes_a_model_file(tmp_path, capsys):
    from speakerforge.models import build_model
    from speakerforge.models.modelfile import save_embedding_model

    m = build_model("ecapa_tdnn", channels=16, embedding_dim=8)
    save_embedding_model(tmp_path / "m.safetensors", m, "ecapa_tdnn", {"channels": 16, "embedding_dim": 8})
    assert main(["inspect", str(tmp_path / "m.safetensors")]) == 0
    out = capsys.readouterr().out
    assert '"ecapa_tdnn"' in out and '"embedding_dim": 8' in out
