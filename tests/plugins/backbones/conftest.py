"""Fabricated weight files in the layouts researchers download, for the format tests.

Each fabricator takes the tensors of a tiny vltk backbone (random, built by timm/open_clip) and writes them out
under the key names of an official release, so that loading the file back must reproduce that backbone exactly.
The names are written out here from the reference code (BAAI's EVA02 ``modeling_pretrain.py`` and EVA-CLIP
``eva_vit_model.py``/``model.py``, OpenAI's ``clip/model.py`` as open_clip's ``CLIP`` keeps it, Meta's DINOv2
``vision_transformer.py`` with ``block_chunks``), independently of the loader's mapping.

``subln_eva02`` swaps the ``eva02`` ``tiny`` variant for a 64-wide, 4-block EVA02 with the B/L block design
(separate q/k/v projections, sub-LN in attention and SwiGLU, timm head as image-text projection), so BAAI's
EVA02-L/EVA02-CLIP names can be tested on a model that builds in milliseconds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import Tensor, nn

#: timm's EVA module names -> BAAI's (inverse of what timm's checkpoint filter documents).
TIMM_TO_BAAI: tuple[tuple[str, str], ...] = (
    (".attn.norm.", ".attn.inner_attn_ln."),
    (".mlp.norm.", ".mlp.ffn_ln."),
    (".mlp.fc1_g.", ".mlp.w1."),
    (".mlp.fc1_x.", ".mlp.w2."),
    (".mlp.fc1.", ".mlp.w12."),
    (".mlp.fc2.", ".mlp.w3."),
)


def baai_eva02_tower(trunk: Mapping[str, Tensor], *, head_dim: int) -> dict[str, Tensor]:
    """A timm ``Eva`` state dict under BAAI's EVA02 names (q/v biases as ``q_bias``/``v_bias``, ``fc_norm`` of a
    token-pooled tower as the final ``norm``), plus the RoPE tables BAAI's files carry (``[16*16, head_dim]``, at
    the top and, the module being shared, under every block's ``attn.rope``)."""
    baai: dict[str, Tensor] = {}
    for key, value in trunk.items():
        dotted = "." + key
        for timm_name, baai_name in TIMM_TO_BAAI:
            dotted = dotted.replace(timm_name, baai_name)
        dotted = re.sub(r"\.attn\.(q|v)_proj\.bias$", r".attn.\1_bias", dotted)
        key = dotted[1:]
        baai["norm." + key[len("fc_norm.") :] if key.startswith("fc_norm.") else key] = value.clone()
    cos, sin = torch.randn(16 * 16, head_dim), torch.randn(16 * 16, head_dim)
    blocks = sorted({key.split(".")[1] for key in trunk if key.startswith("blocks.")}, key=int)
    for where in ["", *(f"blocks.{index}.attn." for index in blocks)]:
        baai[f"{where}rope.freqs_cos"], baai[f"{where}rope.freqs_sin"] = cos, sin
    return baai


def baai_eva02_mim(trunk: Mapping[str, Tensor], *, head_dim: int) -> dict[str, Tensor]:
    """BAAI's EVA02 MIM pre-training checkpoint: the tower without an image-text projection (timm's ``head``),
    plus ``mask_token`` and the regression ``lm_head``."""
    state = baai_eva02_tower({k: v for k, v in trunk.items() if not k.startswith("head.")}, head_dim=head_dim)
    channels = trunk["cls_token"].shape[-1]
    state["mask_token"] = torch.randn(1, 1, channels)
    state["lm_head.weight"] = torch.randn(48, channels)
    state["lm_head.bias"] = torch.randn(48)
    return state


def openai_text_layout(clip_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """An open_clip ``CustomTextCLIP`` state dict in OpenAI's ``CLIP`` layout (text tower at the top level)."""
    return {key.removeprefix("text."): value.clone() for key, value in clip_state.items()}


def eva02_clip_release(clip_state: Mapping[str, Tensor], *, head_dim: int) -> dict[str, Tensor]:
    """BAAI's EVA02-CLIP checkpoint: BAAI's vision names under ``visual.`` (``visual.head`` = the projection),
    OpenAI's text layout, ``logit_scale``."""
    trunk = {key[len("visual.trunk.") :]: value for key, value in clip_state.items() if key.startswith("visual.trunk.")}
    vision = {"visual." + key: value for key, value in baai_eva02_tower(trunk, head_dim=head_dim).items()}
    rest = {key: value for key, value in clip_state.items() if not key.startswith("visual.")}
    return {**vision, **openai_text_layout(rest)}


def openai_release(clip_state: Mapping[str, Tensor], *, image_size: int) -> dict[str, Tensor]:
    """OpenAI's CLIP state dict: ``CLIP`` layout plus the three scalars OpenAI's files carry."""
    state = openai_text_layout(clip_state)
    state["input_resolution"] = torch.tensor(image_size)
    state["context_length"] = torch.tensor(clip_state["text.positional_embedding"].shape[0])
    state["vocab_size"] = torch.tensor(clip_state["text.token_embedding.weight"].shape[0])
    return state


def save_torchscript(state: Mapping[str, Tensor], path: Path) -> str:
    """A TorchScript archive whose ``state_dict()`` is ``state`` (modules nested as the dotted names say),
    the container OpenAI ships ``ViT-B-16.pt`` and ``RN50.pt`` in."""
    root = nn.Module()
    for key, value in state.items():
        *parents, leaf = key.split(".")
        module = root
        for name in parents:
            if not hasattr(module, name):
                module.add_module(name, nn.Module())
            module = getattr(module, name)
        module.register_buffer(leaf, value.clone())
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(root).save(str(path))
    return str(path)


def meta_dinov2_release(trunk: Mapping[str, Tensor], *, block_chunks: int = 0) -> dict[str, Tensor]:
    """Meta's DINOv2 checkpoint of a timm DINOv2 (no registers): ``mask_token`` added and, with
    ``block_chunks``, blocks stored as ``blocks.<chunk>.<index>`` (Meta's ``BlockChunk``)."""
    depth = 1 + max(int(key.split(".")[1]) for key in trunk if key.startswith("blocks."))
    per_chunk = depth // block_chunks if block_chunks else depth
    state: dict[str, Tensor] = {}
    for key, value in trunk.items():
        if block_chunks and key.startswith("blocks."):
            index = int(key.split(".")[1])
            key = f"blocks.{index // per_chunk}.{key[len('blocks.') :]}"
        state[key] = value.clone()
    state["mask_token"] = torch.zeros(1, trunk["cls_token"].shape[-1])
    return state


@pytest.fixture
def fabricate() -> SimpleNamespace:
    """The fabricators above, for tests (conftest functions are not importable under --import-mode=importlib)."""
    return SimpleNamespace(
        baai_eva02_mim=baai_eva02_mim,
        eva02_clip_release=eva02_clip_release,
        openai_release=openai_release,
        save_torchscript=save_torchscript,
        meta_dinov2_release=meta_dinov2_release,
    )


# ------------------------------------------------------------------------------------ EVA02 with B/L blocks
SUBLN_ARCH = "vltk_test_eva02_subln_tiny"
SUBLN_CONFIG = "vltk-test-EVA02-subln-tiny"


def _register_subln_arch() -> None:
    import timm
    from timm.models import register_model
    from timm.models.eva import Eva

    if timm.is_model(SUBLN_ARCH):
        return

    def vltk_test_eva02_subln_tiny(pretrained: bool = False, **kwargs: object) -> Eva:
        for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(key, None)
        design = {
            "img_size": 224,
            "patch_size": 16,
            "embed_dim": 64,
            "depth": 4,
            "num_heads": 2,
            "mlp_ratio": 4 * 2 / 3,
            "qkv_fused": False,
            "swiglu_mlp": True,
            "scale_mlp": True,
            "scale_attn_inner": True,
            "use_rot_pos_emb": True,
            "ref_feat_shape": (16, 16),
        }
        return Eva(**{**design, **kwargs})

    globals()[SUBLN_ARCH] = vltk_test_eva02_subln_tiny
    register_model(vltk_test_eva02_subln_tiny)


@pytest.fixture
def subln_eva02(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """While active, ``eva02`` ``variant=tiny`` builds the 64-wide EVA02 with B/L blocks (module docstring)."""
    import open_clip

    from vltk_plugins.backbones.open_clip_vit import model

    _register_subln_arch()
    if open_clip.get_model_config(SUBLN_CONFIG) is None:
        config = {
            "embed_dim": 32,
            "vision_cfg": {"image_size": 224, "timm_model_name": SUBLN_ARCH, "timm_pool": "token", "timm_proj": None},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
        }
        path = tmp_path_factory.mktemp("open_clip_config") / f"{SUBLN_CONFIG}.json"
        path.write_text(json.dumps(config))
        open_clip.add_model_config(path)
    monkeypatch.setitem(model.EVA02_VARIANTS, "tiny", (SUBLN_ARCH, 16, SUBLN_CONFIG))
    yield
