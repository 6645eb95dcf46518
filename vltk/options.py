"""Base class for component options: every backbone, adapter, decoder... declares its knobs as one of these.

``extra="forbid"`` makes a typo such as ``adapter.lora_dm=8`` fail with the key's name instead of being
ignored; ``frozen=True`` keeps a validated configuration from drifting after it was written to
``config.resolved.yaml``. Field descriptions are what ``vltk show KIND NAME`` prints, so write them for users.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Options(BaseModel):
    """Options of one component. Subclass it and declare fields with defaults and ``Field(description=...)``."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoOptions(Options):
    """For components without knobs."""
