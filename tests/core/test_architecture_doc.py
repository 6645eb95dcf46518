"""docs/architecture.md cannot drift from the code it describes.

The worked example shows files of ``tests/sample_plugin/``: a code block whose preceding paragraph names a file as
```path` (in full)`` must equal that file, one named ```path` (excerpt)`` must appear in it (chunks separated by a
line ``...`` appear in that order, each as consecutive lines). Every repository path the page writes in backticks
must exist, and the page's list of ``vltk.api`` names must be the module's ``__all__``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"
FENCE = re.compile(r"^```[\w-]*\n(.*?)^```$", re.MULTILINE | re.DOTALL)
SHOWN = re.compile(r"`([^`\s]+)` \((in full|excerpt)")
REPO_PATH = re.compile(r"^(?:vltk|kernels|plugins|tests|docs|benchmarks)/[\w./-]*$")

#: What the worked example must keep showing (a page that dropped its example would pass the other checks).
REQUIRED = {
    "tests/sample_plugin/pyproject.toml": "in full",
    "tests/sample_plugin/vltk_sample/linear/options.py": "in full",
    "tests/sample_plugin/vltk_sample/linear/model.py": "in full",
    "tests/sample_plugin/vltk_sample/recipes/linear.yaml": "in full",
    "tests/sample_plugin/vltk_sample/hooks.py": "excerpt",
}


def shown_files(text: str) -> list[tuple[str, str, str]]:
    """``(path, "in full" | "excerpt", code)`` for every code block that the paragraph before it says is a file."""
    shown = []
    for match in FENCE.finditer(text):
        paragraph = " ".join(text[: match.start()].rstrip("\n").split("\n\n")[-1].split())
        named = SHOWN.findall(paragraph)
        if named:
            path, mode = named[-1]
            shown.append((path, mode, match.group(1)))
    return shown


def backticked(text: str) -> set[str]:
    """Every inline-code token of the page outside code blocks."""
    prose = FENCE.sub("", text)
    return set(re.findall(r"`([^`\n]+)`", prose))


def _lines(code: str) -> list[str]:
    lines = code.split("\n")
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def contains_in_order(haystack: list[str], chunks: list[list[str]]) -> str | None:
    """None when every chunk is a run of consecutive lines of ``haystack``, in order; else the first chunk missing."""
    start = 0
    for chunk in chunks:
        width = len(chunk)
        found = next((i for i in range(start, len(haystack) - width + 1) if haystack[i : i + width] == chunk), None)
        if found is None:
            return "\n".join(chunk)
        start = found + width
    return None


def test_the_contains_in_order_helper_can_fail() -> None:
    assert contains_in_order(["a", "b", "c"], [["a"], ["c"]]) is None
    assert contains_in_order(["a", "b", "c"], [["c"], ["a"]]) == "a"
    assert contains_in_order(["a", "b", "c"], [["a", "c"]]) == "a\nc"


def test_the_worked_example_shows_the_sample_plugin() -> None:
    shown = {path: mode for path, mode, _ in shown_files(DOC.read_text())}
    missing = {path: mode for path, mode in REQUIRED.items() if shown.get(path) != mode}
    assert not missing, f"docs/architecture.md no longer shows {missing}"


@pytest.mark.parametrize(
    "path, mode, code", shown_files(DOC.read_text()), ids=[f"{p} ({m})" for p, m, _ in shown_files(DOC.read_text())]
)
def test_shown_code_matches_the_file(path: str, mode: str, code: str) -> None:
    file = ROOT / path
    assert file.is_file(), f"docs/architecture.md shows {path}, which does not exist"
    actual = _lines(file.read_text())
    if mode == "in full":
        assert _lines(code) == actual, f"docs/architecture.md shows {path} in full, but the file differs: copy it again"
    else:
        chunks = [_lines(chunk) for chunk in re.split(r"^\.\.\.$", code, flags=re.MULTILINE)]
        missing = contains_in_order(actual, [chunk for chunk in chunks if chunk])
        assert missing is None, f"docs/architecture.md's excerpt of {path} is not in the file:\n{missing}"


def test_every_sample_plugin_path_exists() -> None:
    named = sorted(token for token in backticked(DOC.read_text()) if token.startswith("tests/sample_plugin/"))
    assert named, "the worked example names no file of tests/sample_plugin/"
    missing = [token for token in named if not (ROOT / token).exists()]
    assert not missing, f"docs/architecture.md names paths that do not exist: {missing}"


def test_every_repository_path_exists() -> None:
    named = sorted(token for token in backticked(DOC.read_text()) if REPO_PATH.match(token))
    missing = [token for token in named if not (ROOT / token).exists()]
    assert not missing, f"docs/architecture.md names paths that do not exist: {missing}"


def test_the_listed_api_names_are_the_public_surface() -> None:
    import vltk.api

    text = DOC.read_text()
    bullet = next(item for item in text.split("\n- ") if item.startswith("**Imports**")).split("\n\n")[0]
    listed = set(re.findall(r"`(\w+)`", bullet))
    written = {token.removeprefix("vltk.api.").split("(")[0] for token in backticked(text) if "vltk.api." in token}
    assert listed == set(vltk.api.__all__), (
        f"docs/architecture.md's list of vltk.api names differs from vltk.api.__all__: "
        f"missing {sorted(set(vltk.api.__all__) - listed)}, extra {sorted(listed - set(vltk.api.__all__))}"
    )
    assert written <= set(vltk.api.__all__), f"docs/architecture.md names {sorted(written - set(vltk.api.__all__))}"
