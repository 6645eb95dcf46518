"""Base class for component options: every backbone, adapter, decoder... declares its knobs as one of these.

``extra="forbid"`` makes a typo such as ``adapter.lora_dm=8`` fail with the key's name instead of being
ignored; ``frozen=True`` keeps a validated configuration from drifting after it was written to
``config.resolved.yaml``. Field descriptions are what ``vltk show KIND NAME`` prints, so write them for users.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict


class Options(BaseModel):
    """Options of one component. Subclass it and declare fields with defaults and ``Field(description=...)``."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoOptions(Options):
    """For components without knobs."""


OptionsT = TypeVar("OptionsT", bound=Options)


def coerce_options(options: Any, model: type[OptionsT], component: str) -> OptionsT:
    """Accept an options object, a plain mapping (validated) or None (defaults) in a factory.

    The registry always passes a validated object; Python callers and tests often pass a dict or nothing.
    """
    if options is None:
        return model()
    if isinstance(options, Mapping):
        return model.model_validate(dict(options))
    if not isinstance(options, model):
        raise TypeError(
            f"{component}: options must be {model.__name__}, a mapping or None, got {type(options).__name__}"
        )
    return options
