"""Entry point of the built-in prompters: CLIP's hand-written templates and CoOp's learned context.

Light on purpose: only options models are imported here; each factory imports torch and its module when a run
actually builds the component (:func:`vltk.api.lazy_factory`).
"""

from __future__ import annotations

from vltk.api import Register, hookimpl, lazy_factory
from vltk_plugins.prompters.clip_prompts.options import ClipTemplateOptions, CoOpOptions


@hookimpl
def vltk_register_prompters(register: Register) -> None:
    register(
        "clip-template",
        lazy_factory("vltk_plugins.prompters.clip_prompts.model", "build_clip_template"),
        options=ClipTemplateOptions,
        summary="hand-written prompt templates through the frozen text tower (CLIP zero-shot), cached",
        paper="CLIP (Radford et al., ICML 2021)",
    )
    register(
        "coop",
        lazy_factory("vltk_plugins.prompters.clip_prompts.model", "build_coop"),
        options=CoOpOptions,
        summary="learnable context tokens shared by all classes, frozen text tower",
        paper="CoOp (Zhou et al., IJCV 2022); DenseCLIP's language-domain prompt",
    )
