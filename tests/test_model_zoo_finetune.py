"""`finetune --init CKPT --model-id ID`: a released checkpoint of each family fine-tunes with no model in the config,
and the update-integrity check passes (every trainable tensor of the new families gets a gradient and changes)."""

from __future__ import annotations

import pytest
import torch

from speakerforge.checkpoint_io import load_model_file
from speakerforge.cli import main
from speakerforge.data.features import FeatureSpec
from speakerforge.models.zoo import find
from tests.test_finetune import BASE_SETS
from tests.test_model_zoo import reference_for
from tests.trainutil import TINY_MODEL, tiny_corpus

FAMILY_ROWS = [
    "iic/speech_eres2netv2_sv_zh-cn_16k-common",
    "iic/speech_eres2net_sv_zh-cn_16k-common",
    "iic/speech_res2net_sv_zh-cn_3dspeaker_16k",
    "damo/speech_rdino_ecapa_tdnn_sv_en_voxceleb_16k",
    "wespeaker/voxblink2_samresnet34",
    "wespeaker/voxceleb_resnet221_LM",
    "wespeaker/eres2net_cn_commom_200k",
    "wespeaker/voxceleb_ECAPA512",
    "wespeaker/voxceleb_CAM++",
    "wespeaker/voxceleb_gemini_dfresnet114_LM",
    "wespeaker/voxceleb_redimnet2_B6_LM",
    "wespeaker/voxceleb_voxblink2_w2v_bert2_lora_adapterMFA_lm",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return tiny_corpus(tmp_path_factory.mktemp("zoo_ft") / "b", n_speakers=4, seed=2, prefix="b")


@pytest.mark.parametrize("model_id", FAMILY_ROWS)
def test_finetune_from_a_released_checkpoint_by_model_id(corpus, tmp_path, model_id):
    entry = find(model_id)
    ref = reference_for(entry)  # the reference toolkit's checkpoint, shrunk with --set model.args
    torch.save(ref.checkpoint, tmp_path / "release.ckpt")
    exp = tmp_path / "exp"
    args = ["--quiet", "finetune", "--init", str(tmp_path / "release.ckpt"), "--model-id", model_id]
    args += ["--exp", str(exp), "--data", str(corpus)]
    sets = [*BASE_SETS[len(TINY_MODEL) :], "data.batch_size=4"] + [f"model.args.{k}={v}" for k, v in ref.sets.items()]
    assert main(args + [x for s in sets for x in ("--set", s)]) == 0
    state, meta = load_model_file(exp / "model.safetensors")
    assert meta["model"]["name"] == entry.arch
    assert meta["model"]["args"] == {**entry.args, **ref.sets}
    # trained on the release's features (ReDimNet2: tfmel, 72 bins), not the config's default fbank
    assert FeatureSpec.from_meta(meta["features"]) == FeatureSpec.from_meta(entry.features)
