"""The generic prompters ``clip-template`` and ``coop`` and the shared text helpers, on tiny random CLIP towers."""

from __future__ import annotations

import warnings

import open_clip
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

import vltk
from vltk.context import BuildContext
from vltk.errors import UserError
from vltk.interfaces import Prompter
from vltk_plugins.backbones.clip_resnet.model import build_clip_resnet
from vltk_plugins.backbones.open_clip_vit.model import TINY_CLIP_CONFIG, build_clip_vit, build_eva02
from vltk_plugins.prompters.clip_prompts.model import (
    ClipTemplatePrompter,
    CoOpPrompter,
    build_clip_template,
    build_coop,
    encode_token_embeddings,
    validate_class_names,
)
from vltk_plugins.prompters.clip_prompts.options import ClipTemplateOptions, CoOpOptions

NAMES = ["road", "traffic light", "sky"]


def _quiet(build, options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build(options)


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return _quiet(build_clip_resnet, {"variant": "tiny"}).eval()


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return _quiet(build_clip_vit, {"variant": "tiny"}).eval()


@pytest.fixture(scope="module")
def eva():
    torch.manual_seed(0)
    return _quiet(build_eva02, {"variant": "tiny"}).eval()


def test_validate_class_names() -> None:
    assert validate_class_names(["a", "b"]) == ("a", "b")
    for bad, match in [([], "empty"), (["a", ""], "non-empty"), (["a", "b", "a"], "repeated"), ("ab", "list")]:
        with pytest.raises(UserError, match=match):
            validate_class_names(bad)


@pytest.mark.parametrize("which", ["resnet", "vit", "eva"])
def test_encode_token_embeddings_equals_text_tower(which: str, request: pytest.FixtureRequest) -> None:
    """One helper for the open_clip TextTransformer of all three backbones (EVA02-CLIP's included)."""
    backbone = request.getfixturevalue(which)
    tower = backbone.text_tower()
    tokens = backbone.tokenizer()(NAMES)
    with torch.no_grad():
        expected = tower(tokens)
        got = encode_token_embeddings(tower, tower.token_embedding(tokens), tokens.argmax(dim=-1))
        # a shorter sequence gives the same result (causal mask: positions after EOT do not matter)
        short = tokens[:, :8]
        cut = encode_token_embeddings(tower, tower.token_embedding(short), short.argmax(dim=-1))
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(cut, expected, rtol=1e-5, atol=1e-5)


def test_encode_token_embeddings_on_plain_clip() -> None:
    """open_clip.CLIP keeps the text pieces on the model itself; the helper works there too."""
    torch.manual_seed(0)
    clip = open_clip.CLIP(**TINY_CLIP_CONFIG).eval()
    tokens = open_clip.tokenize(NAMES)
    with torch.no_grad():
        got = encode_token_embeddings(clip, clip.token_embedding(tokens), tokens.argmax(dim=-1))
        torch.testing.assert_close(got, clip.encode_text(tokens))


def test_clip_template_matches_zero_shot_recipe(resnet) -> None:
    templates = ["a photo of a {}.", "a blurry photo of the {}."]
    prompter = build_clip_template({"templates": templates}, BuildContext.from_backbone(resnet, class_names=NAMES))
    assert isinstance(prompter, Prompter) and not prompter.needs_visual_context
    text = prompter()
    per_template = [F.normalize(resnet.encode_text([t.format(n) for n in NAMES]), dim=-1) for t in templates]
    expected = F.normalize(torch.stack(per_template).mean(dim=0), dim=-1)
    torch.testing.assert_close(text, expected)
    assert tuple(text.shape) == (3, 64) and not text.requires_grad
    assert prompter() is text  # cached: computed once
    with torch.no_grad():
        resnet.text_tower().ln_final.bias.add_(0.1)  # new weights (a checkpoint load) refresh the cache
    try:
        assert not torch.allclose(prompter(), text)
    finally:
        with torch.no_grad():
            resnet.text_tower().ln_final.bias.sub_(0.1)
    prompter.set_class_names(["cat", "dog"])
    assert tuple(prompter().shape) == (2, 64) and prompter.class_names == ("cat", "dog")
    with pytest.raises(UserError, match="repeated"):
        prompter.set_class_names(["cat", "cat"])


def test_coop_structure_and_init(resnet) -> None:
    torch.manual_seed(0)
    prompter = build_coop(None, BuildContext.from_backbone(resnet, class_names=NAMES))
    assert isinstance(prompter, CoOpPrompter)
    assert tuple(prompter.contexts.shape) == (1, 8, 64)
    # trunc_normal_(std=0.02) with torch's absolute bounds [-2, 2]: in effect CoOp's normal_(std=0.02)
    contexts = prompter.contexts.detach()
    assert 0.015 < float(contexts.std()) < 0.025 and abs(float(contexts.mean())) < 0.005
    # names tokenised to 13 - 8 = 5 positions: [SOT, name..., EOT, pad]; EOT index shifted by n_ctx
    tokens = resnet.tokenizer()(NAMES)[:, :5]
    assert torch.equal(prompter.name_tokens, tokens)
    assert torch.equal(prompter.eot_indices(), tokens.argmax(dim=-1) + 8)
    assert prompter.eot_indices().tolist() == [10, 11, 10]
    assert [name for name, _ in prompter.named_parameters()] == ["contexts"]
    text = prompter()
    assert tuple(text.shape) == (3, 64) and text.requires_grad


def test_coop_with_word_context_equals_hand_written_prompt(resnet) -> None:
    """Context set to the embeddings of 'a photo of a' reproduces encode_text('a photo of a <name>'):
    the sequence layout [SOT, ctx, name, EOT] and the shifted EOT index are right."""
    tower = resnet.text_tower()
    words = resnet.tokenizer()(["a photo of a"])[0]
    n_ctx = int(words.argmax()) - 1  # tokens between SOT and EOT
    prompter = build_coop(
        {"n_ctx": n_ctx, "context_length": n_ctx + 5}, BuildContext.from_backbone(resnet, class_names=NAMES)
    )
    with torch.no_grad():
        prompter.contexts.copy_(tower.token_embedding(words[1 : 1 + n_ctx]).unsqueeze(0))
        torch.testing.assert_close(prompter(), resnet.encode_text([f"a photo of a {n}" for n in NAMES]))


def test_coop_long_names_and_label_swap(resnet) -> None:
    prompter = build_coop(None, BuildContext.from_backbone(resnet, class_names=NAMES))
    contexts = prompter.contexts.detach().clone()
    long_name = "a very long class name with many words"
    prompter.set_class_names(["car", long_name])
    needed = int(resnet.tokenizer()([long_name])[0].argmax()) + 1
    assert prompter.name_tokens.shape == (2, needed)
    assert tuple(prompter().shape) == (2, 64)
    assert torch.equal(prompter.contexts, contexts)  # learned context kept
    with pytest.raises(UserError, match="text positions"):
        prompter.set_class_names([" ".join(["word"] * 80)])
    with pytest.raises(UserError, match="empty"):
        prompter.set_class_names([])


def test_frozen_tower_gets_no_update_while_context_does(resnet) -> None:
    torch.manual_seed(0)
    prompter = build_coop(None, BuildContext.from_backbone(resnet, class_names=NAMES))
    tower = prompter.text_tower
    assert not any(p.requires_grad for p in tower.parameters())
    before = {name: p.detach().clone() for name, p in tower.named_parameters()}
    contexts = prompter.contexts.detach().clone()
    # even handed to the optimizer, frozen tower weights never move: they get no gradient
    optimizer = torch.optim.AdamW([*prompter.parameters(), *tower.parameters()], lr=1e-2)
    target = torch.randn(3, 64)
    loss = (prompter() - target).pow(2).mean()
    loss.backward()
    assert prompter.contexts.grad is not None and prompter.contexts.grad.abs().sum() > 0
    assert all(p.grad is None for p in tower.parameters())
    optimizer.step()
    assert not torch.equal(prompter.contexts, contexts)
    for name, parameter in tower.named_parameters():
        assert torch.equal(parameter, before[name]), name


def test_score_concat_index_auto(resnet, vit) -> None:
    assert build_coop(None, BuildContext.from_backbone(resnet, class_names=NAMES)).score_concat_index == 3
    assert build_coop(None, BuildContext.from_backbone(vit, class_names=NAMES)).score_concat_index == 2
    prompter = build_clip_template(
        {"score_concat_index": None, "aux_loss_weight": 0}, BuildContext.from_backbone(vit, class_names=NAMES)
    )
    assert (prompter.score_concat_index, prompter.aux_loss_weight, prompter.temperature) == (None, 0.0, 0.07)
    assert (
        build_coop({"score_concat_index": 1}, BuildContext.from_backbone(vit, class_names=NAMES)).score_concat_index
        == 1
    )


def test_factory_errors(resnet) -> None:
    with pytest.raises(UserError, match="text tower"):
        build_coop(None, BuildContext(backbone=torch.nn.Linear(2, 2), class_names=NAMES))
    with pytest.raises(UserError, match="backbone"):
        build_clip_template(None, BuildContext(class_names=NAMES))
    with pytest.raises(UserError, match="class_names"):
        build_coop(None, BuildContext.from_backbone(resnet))
    with pytest.raises(UserError, match="positions"):
        build_coop({"context_length": 100}, BuildContext.from_backbone(resnet, class_names=NAMES))


def test_options() -> None:
    assert ClipTemplateOptions().templates == ["a photo of a {}."]
    options = CoOpOptions()
    assert (options.n_ctx, options.context_length, options.init_std) == (8, 13, 0.02)
    assert (options.score_concat_index, options.aux_loss_weight, options.temperature) == ("auto", 0.4, 0.07)
    with pytest.raises(ValidationError, match="exactly one"):
        ClipTemplateOptions(templates=["no placeholder"])
    with pytest.raises(ValidationError, match="at least one"):
        ClipTemplateOptions(templates=[])
    with pytest.raises(ValidationError, match="no room"):
        CoOpOptions(n_ctx=12, context_length=13)
    with pytest.raises(ValidationError, match="0..3"):
        CoOpOptions(score_concat_index=4)
    assert CoOpOptions.model_validate(CoOpOptions().model_dump()) == CoOpOptions()  # idempotent


def test_registered_and_created_through_vltk(resnet) -> None:
    assert {"clip-template", "coop"} <= set(vltk.list_components("prompter"))
    prompter = vltk.create("prompter", "coop", n_ctx=4, backbone=resnet, class_names=NAMES, num_classes=3)
    assert prompter.n_ctx == 4 and isinstance(prompter, CoOpPrompter)
    assert isinstance(
        vltk.create("prompter", "clip-template", backbone=resnet, class_names=NAMES), ClipTemplatePrompter
    )
