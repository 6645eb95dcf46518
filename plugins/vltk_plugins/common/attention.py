"""The ``attention`` option of the ViT backbones: ``auto | xformers | sdpa | math``.

The backbones wrap open_clip/timm models, so the swap happens at the attention call, never by copying a model:

* timm attention modules (EVA02's ``EvaAttention``, DINOv2's ``Attention``...) already compute q, k, v and call
  ``F.scaled_dot_product_attention`` when ``fused_attn`` is on. We turn it on and run their own forward inside a
  context that decides what that call does: PyTorch's choice (``sdpa``), its math backend (``math``: the
  ``[B, heads, N, N]`` scores are materialised), or a torch-function mode that hands the call to xformers'
  ``memory_efficient_attention`` (``xformers``).
* open_clip's ``ResidualAttentionBlock`` uses ``nn.MultiheadAttention``, whose internal SDPA call is out of reach;
  its ``attention`` method is replaced by one that projects q, k, v with the module's own ``in_proj`` weights,
  calls :func:`attend` and applies the module's ``out_proj``.

``auto`` is resolved per device at the first forward: xformers on CUDA when it imports *and* a tiny call works
(its compiled extension needs a matching CUDA runtime; on CPU it has no operator at all), otherwise SDPA. The
choice is logged once per process. ``sdpa`` and ``math`` give the same numbers (fp32); ``math`` exists as the
reference and to show what the fused kernels save (``benchmarks/vit_attention.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode

from vltk.api import UserError
from vltk_plugins.common.vit_options import AttentionChoice

logger = logging.getLogger(__name__)

#: The backends a user may request: the ``attention`` option's choices (declared torch-free in vit_options).
AttentionBackend = AttentionChoice
ATTENTION_BACKENDS: tuple[str, ...] = get_args(AttentionChoice)

_XFORMERS_STATUS: dict[str, str | None] = {}  # device type -> None (works) or why not
_LOGGED: set[tuple[str, str]] = set()


def xformers_unavailable_reason(device: torch.device) -> str | None:
    """Why xformers' ``memory_efficient_attention`` cannot run on ``device``, or None when a real call worked."""
    if device.type != "cuda":
        return "xformers has no CPU operator (memory_efficient_attention is CUDA-only)"
    if "cuda" not in _XFORMERS_STATUS:
        try:
            import xformers.ops as xops

            probe = torch.zeros(1, 8, 1, 32, device=device, dtype=torch.float16)
            xops.memory_efficient_attention(probe, probe, probe)
            _XFORMERS_STATUS["cuda"] = None
        except Exception as error:  # ImportError, missing CUDA runtime, "No operator found"...
            _XFORMERS_STATUS["cuda"] = f"xformers does not work here ({type(error).__name__}: {error})"
    return _XFORMERS_STATUS["cuda"]


def resolve_attention(requested: str, device: torch.device) -> str:
    """The backend that runs for ``requested`` on ``device``; a forced but unusable xformers is a UserError."""
    if requested not in ATTENTION_BACKENDS:
        raise UserError(f"unknown attention backend '{requested}'; choose one of {', '.join(ATTENTION_BACKENDS)}")
    if requested == "auto":
        reason = xformers_unavailable_reason(device)
        resolved = "xformers" if reason is None else "sdpa"
        why = "" if reason is None else f" ({reason})"
    elif requested == "xformers":
        reason = xformers_unavailable_reason(device)
        if reason is not None:
            raise UserError(
                f"attention=xformers cannot run on {device.type}: {reason}. Use attention=auto (falls back to "
                "PyTorch SDPA) or attention=sdpa"
            )
        resolved, why = "xformers", ""
    else:
        resolved, why = requested, ""
    if (requested, resolved) not in _LOGGED and not torch.compiler.is_compiling():  # logging breaks a traced graph
        _LOGGED.add((requested, resolved))
        logger.info("ViT attention: %s (requested %s on %s)%s", resolved, requested, device.type, why)
    return resolved


def _xformers_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
) -> Tensor:
    """SDPA's contract (``[B, heads, N, D]``) on top of xformers' ``[B, N, heads, D]`` kernel."""
    import xformers.ops as xops

    bias: Any = None
    if is_causal:
        bias = xops.LowerTriangularMask()
    elif attn_mask is not None:
        bias = attn_mask
        if bias.dtype == torch.bool:
            bias = torch.zeros_like(bias, dtype=query.dtype).masked_fill(~bias, float("-inf"))
        bias = bias.to(query.dtype).expand(query.shape[0], query.shape[1], query.shape[2], key.shape[2])
    out = xops.memory_efficient_attention(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_bias=bias, p=dropout_p, scale=scale
    )
    return out.transpose(1, 2)


class _XformersSDPA(TorchFunctionMode):
    """Routes ``F.scaled_dot_product_attention`` calls made inside the block to xformers (other calls pass)."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and not kwargs.get("enable_gqa", False):
            return _xformers_attention(*args, **kwargs)
        return func(*args, **kwargs)


def backend_context(backend: str) -> Any:
    """What an SDPA call inside the context runs: PyTorch's choice, its math backend, or xformers."""
    if backend == "math":
        return sdpa_kernel([SDPBackend.MATH])
    if backend == "xformers":
        return _XformersSDPA()
    return nullcontext()


def attend(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    backend: str,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> Tensor:
    """``softmax(q kᵀ · scale + mask) v`` for ``[B, heads, N, D]`` inputs with a resolved backend."""
    if backend == "xformers":
        return _xformers_attention(query, key, value, attn_mask, dropout_p, scale=scale)
    with backend_context(backend):
        return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)


class _Resolver:
    """Resolves the requested backend for a device once (the logging happens in :func:`resolve_attention`)."""

    def __init__(self, requested: str) -> None:
        self.requested = requested
        self._resolved: dict[torch.device, str] = {}

    def __call__(self, device: torch.device) -> str:
        if device not in self._resolved:
            self._resolved[device] = resolve_attention(self.requested, device)
        return self._resolved[device]


class _TimmForward:
    """A timm attention module's own forward, run under the chosen backend's context."""

    def __init__(self, forward: Callable[..., Tensor], resolver: _Resolver) -> None:
        self.forward = forward
        self.resolver = resolver

    def __call__(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        with backend_context(self.resolver(x.device)):
            return self.forward(x, *args, **kwargs)


class _MultiheadAttention:
    """Replacement for open_clip's ``ResidualAttentionBlock.attention`` (self-attention through :func:`attend`).

    Uses the block's ``nn.MultiheadAttention`` weights as they are; cross-attention or separate q/k/v projections
    fall back to the original method.
    """

    def __init__(self, block: nn.Module, original: Callable[..., Tensor], resolver: _Resolver) -> None:
        self.attn: nn.MultiheadAttention = block.attn
        self.original = original
        self.resolver = resolver

    def __call__(
        self, q_x: Tensor, k_x: Tensor | None = None, v_x: Tensor | None = None, attn_mask: Tensor | None = None
    ) -> Tensor:
        attn = self.attn
        if k_x is not None or v_x is not None or not attn._qkv_same_embed_dim or attn.bias_k is not None:
            return self.original(q_x, k_x=k_x, v_x=v_x, attn_mask=attn_mask)
        x = q_x if attn.batch_first else q_x.transpose(0, 1)  # [B, N, C]
        batch, tokens, width = x.shape
        heads = attn.num_heads
        qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).view(batch, tokens, 3, heads, width // heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # [B, heads, N, D]
        mask = None
        if attn_mask is not None:  # open_clip passes an additive [N, N] (or [B*heads, N, N]) float mask
            mask = attn_mask.to(query.dtype)
            mask = mask.view(batch, heads, tokens, tokens) if mask.dim() == 3 else mask
        dropout = attn.dropout if attn.training else 0.0
        out = attend(query, key, value, self.resolver(x.device), attn_mask=mask, dropout_p=dropout)
        out = attn.out_proj(out.transpose(1, 2).reshape(batch, tokens, width))
        return out if attn.batch_first else out.transpose(0, 1)


def install_attention(model: nn.Module, requested: str) -> int:
    """Make every attention call in ``model`` use backend ``requested``; returns how many modules were switched.

    Idempotent (installing again replaces the previous choice). Raises :class:`UserError` for an unknown name,
    and for ``xformers`` when it does not import at all (the device check waits for the first forward).
    """
    if requested not in ATTENTION_BACKENDS:
        raise UserError(f"unknown attention backend '{requested}'; choose one of {', '.join(ATTENTION_BACKENDS)}")
    if requested == "xformers":
        try:
            import xformers.ops  # noqa: F401
        except Exception as error:
            raise UserError(
                f"attention=xformers: xformers does not import ({type(error).__name__}: {error}); install it "
                "(pip install 'vltk-dg[xformers]', CUDA only) or use attention=auto / sdpa"
            ) from None
    resolver = _Resolver(requested)
    switched = 0
    for module in model.modules():
        if isinstance(module, nn.MultiheadAttention):
            continue  # handled through its open_clip block below
        original_attention = module.__dict__.get("_vltk_original_attention", getattr(module, "attention", None))
        if isinstance(getattr(module, "attn", None), nn.MultiheadAttention) and callable(original_attention):
            module._vltk_original_attention = original_attention
            module.attention = _MultiheadAttention(module, original_attention, resolver)
            switched += 1
        elif hasattr(module, "fused_attn") and hasattr(module, "num_heads"):
            original_forward = module.__dict__.get("_vltk_original_forward", module.forward)
            module.fused_attn = True  # timm then calls F.scaled_dot_product_attention, which the context steers
            module._vltk_original_forward = original_forward
            module.forward = _TimmForward(original_forward, resolver)
            switched += 1
    return switched


@contextmanager
def logged_choices() -> Iterator[set[tuple[str, str]]]:
    """Forget which choices were logged, for the block (tests check the once-per-process message)."""
    saved = set(_LOGGED)
    _LOGGED.clear()
    try:
        yield _LOGGED
    finally:
        _LOGGED.clear()
        _LOGGED.update(saved)


__all__ = [
    "ATTENTION_BACKENDS",
    "AttentionBackend",
    "attend",
    "backend_context",
    "install_attention",
    "logged_choices",
    "resolve_attention",
    "xformers_unavailable_reason",
]
