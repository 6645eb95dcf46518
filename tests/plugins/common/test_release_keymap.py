"""The key-map engine of released checkpoints: strict, data-driven, every problem one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vltk.errors import UserError
from vltk.testing import invoke
from vltk_plugins.common.releases import Concat, Drop, Rename, apply_keymap

RULES = [
    Drop(r"loss\..*", "a loss buffer"),
    Concat(r"attn\.(?P<part>q|k|v)\.(weight|bias)", r"mha.in_proj_\2", parts=("q", "k", "v")),
    Rename(r"head\.(weight|bias)", r"decoder.head.\1"),
    Rename(r"pos", "text.pos", pad_rows=5),
    Rename(r"anchors", "rpn.anchors", rows=(2, 0, 1), prepend_rows=1),
]


def test_renames_joins_drops_and_reshapes() -> None:
    q, k, v = torch.randn(2, 3), torch.randn(2, 3), torch.randn(2, 3)
    state = {
        "attn.k.weight": k,
        "attn.q.weight": q,
        "attn.v.weight": v,
        "head.weight": torch.ones(4),
        "loss.w": torch.ones(1),
        "pos": torch.ones(3, 2),
        "anchors": torch.tensor([10.0, 11.0, 12.0]),
    }
    mapped = apply_keymap(state, RULES, title="T")
    torch.testing.assert_close(mapped.state["mha.in_proj_weight"], torch.cat([q, k, v]))
    assert mapped.renamed["mha.in_proj_weight"] == "attn.q.weight+attn.k.weight+attn.v.weight"
    assert mapped.renamed["decoder.head.weight"] == "head.weight"
    assert mapped.dropped == {"loss.w": "a loss buffer"}
    assert mapped.state["text.pos"].shape == (5, 2) and mapped.state["text.pos"][3:].abs().sum() == 0
    torch.testing.assert_close(mapped.state["rpn.anchors"], torch.tensor([0.0, 12.0, 10.0, 11.0]))


def test_unknown_keys_incomplete_joins_and_collisions_are_refused() -> None:
    with pytest.raises(UserError, match=r"^T: 1 keys of the file are not in its key map: extra\.conv; "):
        apply_keymap({"head.bias": torch.ones(1), "extra.conv": torch.ones(1)}, RULES, title="T")
    with pytest.raises(UserError, match=r"attn\.q\.bias come without their k/v part"):
        apply_keymap({"attn.q.bias": torch.ones(2)}, RULES, title="T")
    twice = [Rename(r"a|b", "same")]
    with pytest.raises(UserError, match=r"'a' and 'b' both map to 'same'"):
        apply_keymap({"a": torch.ones(1), "b": torch.ones(1)}, twice, title="T")
    with pytest.raises(UserError, match=r"pos has 6 rows, more than the 5"):
        apply_keymap({"pos": torch.ones(6, 2)}, RULES, title="T")


def test_convert_flags(tmp_path: Path) -> None:
    source = tmp_path / "w.pt"
    torch.save({"x": torch.ones(1)}, source)
    both = invoke(["convert", str(source), str(tmp_path / "o.pt"), "--to", "eva02", "--from", "rein"])
    assert both.exit_code == 2 and "give one of them" in both.output
    unknown = invoke(["convert", str(source), str(tmp_path / "o.pt"), "--from", "reins"])
    assert unknown.exit_code == 2 and "did you mean 'rein'" in unknown.output
    neither = invoke(["convert", str(source), str(tmp_path / "o.pt")])
    assert neither.exit_code == 2 and "no released checkpoint vltk recognises" in neither.output
    assert "hf-mask2former: Hugging Face" in neither.output and "--to BACKBONE" in neither.output
    assert not (tmp_path / "o.pt").exists()
