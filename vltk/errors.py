"""Errors that mean "the user asked for something wrong" rather than "vltk is broken".

The CLI turns a :class:`UserError` into one clear line on stderr and exit code 2; anything else is a bug and
keeps its traceback. Raising ``UserError`` from a component factory is how a plugin says "fix your input".
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A problem with the user's input (names, options, paths, files) that they can fix themselves."""


class RandomWeightsWarning(UserWarning):
    """A component was built without pretrained weights (``pretrained=None``): its features are random.

    Components warn with this category so that the core can silence it where the weights come from elsewhere
    (a checkpoint that holds the whole model) without matching message text.
    """


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return a " did you mean 'x'?" suffix for the closest choice, or an empty string when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" did you mean '{close[0]}'?" if close else ""
