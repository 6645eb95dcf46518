"""The CLIP text side every CLIP image-tower backbone carries: text tower, tokenizer, and its place in checkpoints.

``eva02``, ``clip-vit`` and ``clip-resnet`` wrap a whole open_clip model but register only its image tower as a
submodule, so adapters, optimisers, DDP and layer-decay rules see the image tower alone. Prompters (CoOp,
DenseCLIP, LSeg...) still need the matching text encoder, and a backbone's checkpoint must restore it. This module
is that shared text half, written once:

* :class:`ClipTextSide`, a mixin giving a backbone :meth:`~ClipTextSide.text_tower`,
  :meth:`~ClipTextSide.tokenizer` and :meth:`~ClipTextSide.encode_text`, and moving/casting the unregistered text
  tower (and ``logit_scale``) with the backbone; :meth:`~ClipTextSide.attach_clip` freezes the text half and
  installs the two state-dict hooks;
* :func:`text_state_dict_hook` / :func:`text_load_hook`, which put ``text.*`` and ``logit_scale`` into
  ``state_dict()`` and take them out again on load, so a backbone's state dict is an open_clip checkpoint;
* :data:`OPENAI_MEAN` / :data:`OPENAI_STD`, the input normalisation every CLIP image tower was trained with.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

#: CLIP's input normalisation (open_clip uses it for OpenAI CLIP, LAION CLIP and EVA02-CLIP alike).
OPENAI_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

#: Scalars of the open_clip model outside both towers that travel with the text side.
_SCALARS = ("logit_scale", "logit_bias")


def text_state_dict_hook(module: ClipTextSide, state_dict: dict[str, Any], prefix: str, metadata: Any) -> None:
    """Add the (unregistered) text tower and logit scale to ``state_dict()``: checkpoints stay self-contained.

    A ``register_state_dict_post_hook`` hook; the keys are open_clip's (``text.*``, ``logit_scale``), so the
    backbone's state dict can be passed back as ``pretrained``.
    """
    clip = module.open_clip_model()
    for key, value in clip.text.state_dict().items():
        state_dict[f"{prefix}text.{key}"] = value
    for name in _SCALARS:
        parameter = getattr(clip, name, None)
        if isinstance(parameter, nn.Parameter):
            state_dict[prefix + name] = parameter.detach()


def text_load_hook(
    module: ClipTextSide,
    state_dict: dict[str, Any],
    prefix: str,
    metadata: Any,
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    """Take the text entries out of ``state_dict`` and load them into the text tower (absent entries: kept).

    A ``register_load_state_dict_pre_hook`` hook, the inverse of :func:`text_state_dict_hook`: a vision-only state
    dict still loads (the text tower keeps its weights); text keys of the wrong shape are reported through
    ``error_msgs`` like any other load error.
    """
    clip = module.open_clip_model()
    text_prefix = f"{prefix}text."
    text_state = {
        key[len(text_prefix) :]: state_dict.pop(key) for key in list(state_dict) if key.startswith(text_prefix)
    }
    with torch.no_grad():
        for name in _SCALARS:
            value = state_dict.pop(prefix + name, None)
            parameter = getattr(clip, name, None)
            if value is not None and isinstance(parameter, nn.Parameter):
                parameter.copy_(value.reshape(parameter.shape))
    if not text_state:
        return
    try:
        result = clip.text.load_state_dict(text_state, strict=False)
    except RuntimeError as error:
        error_msgs.append(str(error))
        return
    missing_keys.extend(text_prefix + key for key in result.missing_keys)
    unexpected_keys.extend(text_prefix + key for key in result.unexpected_keys)


class ClipTextSide:
    """The text half of an open_clip model kept beside an image-tower backbone (``self._clip``).

    The text tower is not a registered submodule (so it stays out of the backbone's parameters, optimiser and
    ``requires_grad`` bookkeeping) but moves and casts with the backbone. Prompters reach it through these
    methods, whatever the image tower is (ViT, EVA02 timm tower or ModifiedResNet).
    """

    _clip: nn.Module
    _tokenizer: Any = None
    _tokenizer_kwargs: dict[str, Any] = {}

    def attach_clip(self, clip: nn.Module, tokenizer_kwargs: Mapping[str, Any] | None = None) -> None:
        """Keep ``clip`` (the whole open_clip model) beside the backbone, its text half frozen and in eval mode.

        Call from ``__init__`` after ``nn.Module.__init__``. ``clip`` is stored outside the registered submodules
        (the backbone registers the image tower itself), the text tower and ``logit_scale``/``logit_bias`` stop
        requiring gradients, and the state-dict hooks make ``state_dict()``/``load_state_dict()`` carry the text
        side. ``tokenizer_kwargs`` go to open_clip's ``SimpleTokenizer`` (e.g. a config's ``clean`` setting).
        """
        object.__setattr__(self, "_clip", clip)  # not a submodule: keeps the text tower out of parameters()
        clip.text.requires_grad_(False).eval()
        for name in _SCALARS:
            parameter = getattr(clip, name, None)
            if isinstance(parameter, nn.Parameter):
                parameter.requires_grad_(False)
        self._tokenizer_kwargs = dict(tokenizer_kwargs or {})
        self._tokenizer = None
        self.register_state_dict_post_hook(text_state_dict_hook)  # type: ignore[attr-defined]
        self.register_load_state_dict_pre_hook(text_load_hook)  # type: ignore[attr-defined]

    def open_clip_model(self) -> nn.Module:
        """The whole open_clip model (image tower shared with this backbone, ``logit_scale``...)."""
        return self._clip

    def text_tower(self) -> nn.Module:
        """open_clip's text tower matching this image tower (frozen, eval mode).

        ``text_tower()(tokenizer()(names))`` gives ``[K, text_dim]`` embeddings. Prompt learners (CoOp/DenseCLIP)
        use its ``token_embedding``, ``positional_embedding``, ``transformer``, ``ln_final``,
        ``text_projection`` and ``attn_mask`` directly.
        """
        return self._clip.text

    def tokenizer(self) -> Callable[..., Tensor]:
        """open_clip's BPE ``SimpleTokenizer`` (vocabulary ships with open_clip: offline), built once."""
        if self._tokenizer is None:
            from open_clip.tokenizer import SimpleTokenizer

            self._tokenizer = SimpleTokenizer(context_length=self._clip.text.context_length, **self._tokenizer_kwargs)
        return self._tokenizer

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """Tokenise and encode ``texts`` with the text tower: ``[K, text_dim]``, not normalised."""
        device = next(self._clip.text.parameters()).device
        return self._clip.text(self.tokenizer()(list(texts)).to(device))

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> Any:
        """Move/cast the unregistered text tower (and logit scale) together with the image tower."""
        super()._apply(fn, recurse)  # type: ignore[misc]
        self._clip.text._apply(fn, recurse)
        for name in _SCALARS:
            parameter = getattr(self._clip, name, None)
            if isinstance(parameter, nn.Parameter):
                converted = fn(parameter.data)
                if torch._has_compatible_shallow_copy_type(parameter.data, converted):
                    parameter.data = converted
                else:  # e.g. meta -> cpu (to_empty): a new parameter, as nn.Module._apply does
                    setattr(self._clip, name, nn.Parameter(converted, requires_grad=parameter.requires_grad))
        return self


__all__ = ["OPENAI_MEAN", "OPENAI_STD", "ClipTextSide", "text_load_hook", "text_state_dict_hook"]
