"""load_tango_model: family detection, routing and error messages (CPU, offline)."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json
import types

import pytest
import torch

pytest.importorskip("transformers")

from tango_core.intra_llm import IntraLLMConfig  # noqa: E402
from tango_core import TangoConfig  # noqa: E402
from tango_core.models.llava import LlavaTango, detect_llava_family, resolve_siglip_path  # noqa: E402
from tango_core.models.loader import load_tango_model  # noqa: E402
from tango_core.models.siglip_head import DEFAULT_SIGLIP_ID  # noqa: E402
from tango_core.testing.tiny_llava import llava_7b_config, save_tiny_llava  # noqa: E402


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    return save_tiny_llava(str(tmp_path_factory.mktemp("ckpt") / "tiny-ov"), "llava_onevision").model


def test_loads_onevision_and_overrides_family(tiny_dir: str) -> None:
    model = load_tango_model(tiny_dir, dtype=torch.float32, device="cpu")
    assert isinstance(model, LlavaTango) and model.family == "llava_onevision" and model.tango is None
    assert model.dtype == torch.float32 and model.num_frames == 32
    assert model.model.config._attn_implementation == "sdpa"
    assert model.siglip_path == os.path.join(tiny_dir, "siglip")
    video = load_tango_model(
        tiny_dir, tango=TangoConfig(retention_ratio=0.2), family="llava_video", dtype=torch.float32, device="cpu",
        intra_llm=IntraLLMConfig(layer=2), num_frames=8,
    )
    assert video.family == "llava_video" and video.num_frames == 8 and video.intra_llm_layer == 2
    assert video.uses_intra_llm
    # The SigLIP head comes from the tiny SigLIP checkpoint written beside the model.
    assert video._get_saliency_head().hidden_size == video.model.config.vision_config.hidden_size


def test_llava_video_checkpoint_detected(tmp_path) -> None:
    directory = save_tiny_llava(str(tmp_path / "vid"), "llava_video").model
    assert load_tango_model(directory, dtype=torch.float32, device="cpu").family == "llava_video"


def test_family_detection_rules() -> None:
    plain = types.SimpleNamespace(_name_or_path="")
    assert detect_llava_family(plain, "llava-hf/llava-onevision-qwen2-7b-ov-hf") == "llava_onevision"
    assert detect_llava_family(plain, "llava-hf/LLaVA-Video-7B-Qwen2-hf") == "llava_video"
    assert detect_llava_family(types.SimpleNamespace(tango_family="llava_video"), "x") == "llava_video"
    with pytest.raises(ValueError, match="tango_family"):
        detect_llava_family(types.SimpleNamespace(tango_family="llava_next"), "x")
    assert resolve_siglip_path(plain, "x", None) == DEFAULT_SIGLIP_ID
    assert resolve_siglip_path(plain, "x", "/my/siglip") == "/my/siglip"


def test_unknown_architecture_message(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    with pytest.raises(ValueError, match="Unsupported architecture: model_type='bert'.*llava_onevision.*qwen2_5_vl"):
        load_tango_model(str(tmp_path))


def test_missing_config_and_bad_family(tmp_path, tiny_dir: str) -> None:
    with pytest.raises(ValueError, match="no config.json"):
        load_tango_model(str(tmp_path))
    with pytest.raises(ValueError, match="does not match the checkpoint's model_type"):
        load_tango_model(tiny_dir, family="qwen2_5_vl")
    with pytest.raises(ValueError, match="Unknown family"):
        load_tango_model(tiny_dir, family="llava_next")


def test_routes_qwen2_5_vl(tmp_path, monkeypatch) -> None:
    from tango_core.models import qwen2_5_vl

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    calls = []

    def fake_from_pretrained(path, **kwargs):
        calls.append((path, kwargs))
        return "qwen-adapter"

    monkeypatch.setattr(qwen2_5_vl.Qwen25VLTango, "from_pretrained", staticmethod(fake_from_pretrained))
    config = TangoConfig(retention_ratio=0.1)
    assert load_tango_model(str(tmp_path), tango=config, dtype=torch.bfloat16, device="cpu") == "qwen-adapter"
    assert calls == [
        (str(tmp_path), dict(tango=config, dtype=torch.bfloat16, device="cpu", attn_implementation=None))
    ]


def test_7b_config_values() -> None:
    config = llava_7b_config("llava_video")
    text, vision = config.text_config, config.vision_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads) == (3584, 28, 28, 4)
    assert (text.intermediate_size, text.vocab_size, text.rope_parameters["rope_theta"]) == (18944, 152064, 1e6)
    assert (vision.hidden_size, vision.intermediate_size, vision.num_attention_heads) == (1152, 4304, 16)
    assert (vision.image_size, vision.patch_size, vision.num_hidden_layers, config.vision_feature_layer) == (384, 14, 26, -1)
    assert config.tango_family == "llava_video"


def test_loads_a_real_tiny_qwen2_5_vl_checkpoint(tmp_path) -> None:
    """The user's entry point on a saved Qwen2.5-VL checkpoint: routing, then a pruned answer."""
    import numpy as np

    from tango_core.models.qwen2_5_vl import Qwen25VLTango
    from tango_core.testing.tiny_qwen import build_tiny_qwen25vl

    directory = build_tiny_qwen25vl(str(tmp_path / "qwen"))
    model = load_tango_model(directory, tango=TangoConfig(retention_ratio=0.2), dtype=torch.float32, device="cpu")
    assert isinstance(model, Qwen25VLTango) and model.family == "qwen2_5_vl"
    frames = np.random.default_rng(0).integers(0, 255, (4, 56, 84, 3), dtype=np.uint8)
    answer = model.generate(frames, "What is shown?", max_new_tokens=2)
    assert 1 <= answer.token_ids.numel() <= 2
    assert not answer.token_ids.is_inference()  # generate runs in inference mode, hands back a normal tensor
    assert answer.stats.visual_tokens_after < answer.stats.visual_tokens_before
