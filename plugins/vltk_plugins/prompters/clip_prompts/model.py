"""The reusable prompters ``clip-template`` (hand-written prompts) and ``coop`` (learned context), and the text helpers
every prompter shares.

A prompter turns the class names into text embeddings with the backbone's own text tower (``clip-vit``, ``eva02``
and ``clip-resnet`` all expose ``text_tower()``, ``tokenizer()`` and ``encode_text(texts)``). The tower stays
frozen (``requires_grad=False``, never in an optimizer) and is not registered as a submodule of the prompter: it
belongs to the backbone, which moves it and saves it. Gradients still flow through it to learned context, which
is why :func:`encode_token_embeddings` runs it without ``no_grad``.

:func:`encode_token_embeddings` is the one place that runs an open_clip text tower on given token embeddings:
it works for open_clip's ``TextTransformer`` (the text tower of ``CustomTextCLIP``, hence of the CLIP ViT, CLIP
ResNet and EVA02-CLIP models) and for a plain ``open_clip.CLIP`` (which keeps the same pieces on the model).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vltk.api import BuildContext, Prompter, UserError, coerce_options
from vltk_kernels import pixel_text_similarity
from vltk_plugins.prompters.clip_prompts.options import ClipTemplateOptions, CoOpOptions, TextGuidanceOptions


# ------------------------------------------------------------------------------------------------------- helpers
def validate_class_names(names: Sequence[str]) -> tuple[str, ...]:
    """The label set as a tuple; an empty set, blank names or duplicates are a :class:`UserError`."""
    if isinstance(names, str):
        raise UserError(f"class names must be a list of names, got the string {names!r}")
    names = tuple(names)
    if not names:
        raise UserError("the label set is empty: give at least one class name")
    bad = [name for name in names if not isinstance(name, str) or not name.strip()]
    if bad:
        raise UserError(f"class names must be non-empty strings, got {bad[:3]}")
    seen: set[str] = set()
    duplicates = sorted({name for name in names if name in seen or seen.add(name)})
    if duplicates:
        raise UserError(f"class names must be unique; repeated: {duplicates}")
    return names


def text_side(backbone: Any, prompter: str) -> tuple[nn.Module, Any]:
    """``(text tower, tokenizer)`` of a backbone, or a :class:`UserError` for vision-only backbones."""
    if backbone is None:
        raise UserError(f"prompter '{prompter}' needs the backbone (its text tower): pass backbone=...")
    if not (callable(getattr(backbone, "text_tower", None)) and callable(getattr(backbone, "tokenizer", None))):
        raise UserError(
            f"prompter '{prompter}' needs a vision-language backbone with a text tower (clip-vit, eva02, "
            f"clip-resnet); {type(backbone).__name__} has none"
        )
    return backbone.text_tower(), backbone.tokenizer()


def resolve_score_concat_index(value: int | str | None, *, is_vit: bool) -> int | None:
    """``"auto"`` -> 3 for CNNs (DenseCLIP's ResNet level, stride 32), 2 for ViTs (its ViT-B level, stride 16)."""
    if value == "auto":
        return 2 if is_vit else 3
    return None if value is None else int(value)


def encode_token_embeddings(text_tower: nn.Module, embeddings: Tensor, eot_indices: Tensor) -> Tensor:
    """Run an open_clip text tower on token embeddings ``[N, L, W]``; pool at ``eot_indices`` ``[N]`` -> ``[N, D]``.

    The steps of open_clip's ``TextTransformer.forward`` / ``CLIP.encode_text`` after the token lookup: add the
    first ``L`` positions, the transformer with the causal mask cut to ``L``, ``ln_final``, the token at each
    EOT index, ``text_projection`` (a matrix or a ``Linear``). With ``embeddings = token_embedding(tokens)`` and
    ``eot_indices = tokens.argmax(-1)`` it equals ``text_tower(tokens)``. Not under ``no_grad``: gradients reach
    whatever produced ``embeddings`` (learned context) although the tower itself is frozen.
    """
    if getattr(text_tower, "cls_emb", None) is not None:
        raise UserError("text towers with an appended class token (CoCa) are not supported by token-level prompts")
    length = embeddings.shape[1]
    positional = text_tower.positional_embedding
    if length > positional.shape[0]:
        raise UserError(f"a prompt of {length} tokens is longer than the text tower's {positional.shape[0]} positions")
    cast_dtype = text_tower.transformer.get_cast_dtype()
    x = embeddings.to(cast_dtype) + positional[:length].to(cast_dtype)
    attn_mask = getattr(text_tower, "attn_mask", None)
    if attn_mask is not None:
        attn_mask = attn_mask[:length, :length]
    x = text_tower.ln_final(text_tower.transformer(x, attn_mask=attn_mask))
    pooled = x[torch.arange(x.shape[0], device=x.device), eot_indices.to(x.device)]
    projection = text_tower.text_projection
    if projection is None:
        return pooled
    if isinstance(projection, nn.Linear):
        return projection(pooled)
    return pooled @ projection


def _check_argmax_pooling(text_tower: nn.Module, prompter: str) -> None:
    """Token-level prompts put the EOT at a computed position: the tower must pool there and mask causally."""
    pool_type = getattr(text_tower, "pool_type", getattr(text_tower, "text_pool_type", "argmax"))
    if pool_type not in ("argmax", "eos") or getattr(text_tower, "attn_mask", None) is None:
        raise UserError(
            f"prompter '{prompter}' needs a causal CLIP text tower pooled at the EOT token; this one pools "
            f"'{pool_type}'{' without a causal mask' if getattr(text_tower, 'attn_mask', None) is None else ''}"
        )


class TextGuidedPrompter(Prompter):
    """Shared bookkeeping: the backbone's text tower (unregistered), the label set, the text-guidance facts."""

    def __init__(
        self,
        backbone: Any,
        class_names: Sequence[str],
        *,
        name: str,
        score_concat_index: int | None,
        aux_loss_weight: float,
        temperature: float,
    ) -> None:
        super().__init__()
        text_tower, tokenizer = text_side(backbone, name)
        object.__setattr__(self, "_text_tower", text_tower)  # the backbone's: not a submodule of the prompter
        self._tokenizer = tokenizer
        self._encode_text = backbone.encode_text
        self.name = name
        self.text_dim = int(getattr(backbone, "text_dim", None) or text_tower.output_dim)
        self.score_concat_index = score_concat_index
        self.aux_loss_weight = float(aux_loss_weight)
        self.temperature = float(temperature)
        self.class_names = validate_class_names(class_names)

    @property
    def text_tower(self) -> nn.Module:
        return self._text_tower

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def score_map(self, dense: Tensor, text: Tensor) -> Tensor:
        """Cosine similarity ``[B, K, h, w]`` of dense embeddings ``[B, D, h, w]`` with the class embeddings ``[K, D]``
        or ``[B, K, D]``, through the fused ``pixel_text_similarity`` op (no normalised copies on the kernel path)."""
        return pixel_text_similarity(dense, text.to(dense.dtype))

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, text_dim={self.text_dim}, score_concat_index={self.score_concat_index}, "
            f"aux_loss_weight={self.aux_loss_weight}, temperature={self.temperature}"
        )


# ------------------------------------------------------------------------------------------------ clip-template
class ClipTemplatePrompter(TextGuidedPrompter):
    """CLIP zero-shot class embeddings from hand-written templates, ``[K, D]``, L2-normalised.

    Per class: encode every template, normalise, average over templates, normalise. When the text tower is frozen
    (always, unless someone unfroze it) the result is computed once without gradients and cached; the cache is
    keyed by device, dtype and the tower parameters' versions, so moving the model or loading weights refreshes it.
    """

    def __init__(self, backbone: Any, class_names: Sequence[str], templates: Sequence[str], **guidance: Any) -> None:
        super().__init__(backbone, class_names, name="clip-template", **guidance)
        self.templates = tuple(templates)
        self._cache: tuple[tuple[Any, ...], Tensor] | None = None

    def set_class_names(self, names: Sequence[str]) -> None:
        self.class_names = validate_class_names(names)
        self._cache = None

    def _compute(self) -> Tensor:
        texts = [template.format(name) for template in self.templates for name in self.class_names]
        embeddings = F.normalize(self._encode_text(texts), dim=-1)
        embeddings = embeddings.reshape(len(self.templates), len(self.class_names), -1).mean(dim=0)
        return F.normalize(embeddings, dim=-1)

    def forward(self, visual_context: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """``[K, text_dim]``; ``visual_context`` is accepted and ignored."""
        parameters = list(self.text_tower.parameters())
        if any(parameter.requires_grad for parameter in parameters):
            return self._compute()
        key = (parameters[0].device, parameters[0].dtype, tuple(parameter._version for parameter in parameters))
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, self._compute())
        return self._cache[1]


# --------------------------------------------------------------------------------------------------------- coop
class CoOpPrompter(TextGuidedPrompter):
    """Learnable context shared by the classes (CoOp; DenseCLIP's prompt), ``[K, text_dim]``, not normalised.

    Sequence: ``[SOT, p1..p_n, name tokens, EOT, pad]`` of length ``context_length`` (13); class names are tokenised
    to ``context_length - n_ctx`` (5) positions, or more when a name needs them (identical results: the causal mask
    hides positions after EOT); the EOT index is ``argmax(tokens) + n_ctx``. The context starts as
    ``trunc_normal_(std=init_std)`` with torch's absolute bounds ±2: CoOp's N(0, 0.02) by default, DenseCLIP's
    std-1 truncated normal with ``init_std=1`` (the ``denseclip`` default).
    """

    def __init__(
        self,
        backbone: Any,
        class_names: Sequence[str],
        *,
        n_ctx: int = 8,
        context_length: int = 13,
        init_std: float = 0.02,
        name: str = "coop",
        **guidance: Any,
    ) -> None:
        super().__init__(backbone, class_names, name=name, **guidance)
        tower = self.text_tower
        _check_argmax_pooling(tower, name)
        self.max_length = int(tower.positional_embedding.shape[0])
        if context_length > self.max_length:
            raise UserError(
                f"{name}: context_length={context_length} exceeds the text tower's {self.max_length} positions"
            )
        self.n_ctx = int(n_ctx)
        self.context_length = int(context_length)
        width = tower.token_embedding.embedding_dim
        self.contexts = nn.Parameter(torch.empty(1, self.n_ctx, width))
        nn.init.trunc_normal_(self.contexts, std=init_std)
        self.register_buffer("name_tokens", torch.zeros(0, 0, dtype=torch.long), persistent=False)
        self.set_class_names(self.class_names)

    def set_class_names(self, names: Sequence[str]) -> None:
        """Tokenise a new label set (the learned context is kept)."""
        names = validate_class_names(names)
        tokens = self._tokenizer(list(names), context_length=self.max_length)
        needed = tokens.argmax(dim=-1) + 1  # SOT + name + EOT
        room = self.max_length - self.n_ctx
        if int(needed.max()) > room:
            longest = names[int(needed.argmax())]
            raise UserError(f"{self.name}: class name {longest!r} needs more than the {room} text positions left")
        length = max(self.context_length - self.n_ctx, int(needed.max()))
        self.name_tokens = tokens[:, :length].to(self.name_tokens.device)
        self.class_names = names

    def eot_indices(self) -> Tensor:
        """Position of each class's EOT token in the full sequence (context tokens shift it by ``n_ctx``)."""
        return self.name_tokens.argmax(dim=-1) + self.n_ctx

    def text_embeddings(self) -> Tensor:
        """``[K, text_dim]`` through the frozen tower, differentiable w.r.t. ``contexts``."""
        tower = self.text_tower
        tokens = self.name_tokens.to(tower.token_embedding.weight.device)
        embedded = tower.token_embedding(tokens)
        contexts = self.contexts.to(embedded.dtype).expand(tokens.shape[0], -1, -1)
        sequence = torch.cat([embedded[:, :1], contexts, embedded[:, 1:]], dim=1)
        return encode_token_embeddings(tower, sequence, self.eot_indices())

    def forward(self, visual_context: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """``[K, text_dim]``; ``visual_context`` is accepted and ignored."""
        return self.text_embeddings()

    def extra_repr(self) -> str:
        return f"n_ctx={self.n_ctx}, context_length={self.context_length}, {super().extra_repr()}"


# ---------------------------------------------------------------------------------------------------- factories
def guidance_kwargs(options: TextGuidanceOptions, context: BuildContext) -> dict[str, Any]:
    """The text-guidance constructor arguments, ``"auto"`` resolved from the backbone (``is_vit``)."""
    return {
        "score_concat_index": resolve_score_concat_index(options.score_concat_index, is_vit=context.is_vit),
        "aux_loss_weight": options.aux_loss_weight,
        "temperature": options.temperature,
    }


def require_text_side(context: BuildContext, prompter: str) -> None:
    """The facts every prompter needs: the built backbone (its text tower) and the class names."""
    context.require(
        "backbone", "class_names", component=f"prompter '{prompter}'", hint="the pipeline passes the dataset's"
    )


def build_clip_template(
    options: ClipTemplateOptions | Mapping[str, Any] | None, context: BuildContext
) -> ClipTemplatePrompter:
    """Factory for ``clip-template``; context: ``backbone`` and ``class_names``."""
    opts = coerce_options(options, ClipTemplateOptions, "clip-template")
    require_text_side(context, "clip-template")
    return ClipTemplatePrompter(context.backbone, context.class_names, opts.templates, **guidance_kwargs(opts, context))


def build_coop(options: CoOpOptions | Mapping[str, Any] | None, context: BuildContext) -> CoOpPrompter:
    """Factory for ``coop``; context: ``backbone`` and ``class_names``."""
    opts = coerce_options(options, CoOpOptions, "coop")
    require_text_side(context, "coop")
    return CoOpPrompter(
        context.backbone,
        context.class_names,
        n_ctx=opts.n_ctx,
        context_length=opts.context_length,
        init_std=opts.init_std,
        **guidance_kwargs(opts, context),
    )


__all__ = [
    "ClipTemplatePrompter",
    "CoOpPrompter",
    "TextGuidedPrompter",
    "build_clip_template",
    "build_coop",
    "encode_token_embeddings",
    "guidance_kwargs",
    "require_text_side",
    "resolve_score_concat_index",
    "text_side",
    "validate_class_names",
]
