"""The import graph keeps its layers: the core, the kernels and the plugins import only what they may.

The rules (``docs``: the shared decisions of the Architecture issue):

- the core (``vltk``) imports neither the kernels (``vltk_kernels``) nor any plugin package;
- ``vltk_kernels`` imports nothing of ``vltk`` or of the plugins: it works installed alone;
- a plugin module imports from the core only ``vltk.api`` (``from vltk import hookimpl`` is tolerated);
- nobody imports a private (underscore) name from outside the package that owns it. A private name is owned by
  the package holding the module that defines it (a private module by its parent package); packages nested
  deeper than a component (``vltk_plugins/<kind>/<component>``, three levels) count as that component. So the
  modules of ``vltk_plugins/datasets/synthetic/`` share privates, ``datasets/detection`` and ``backbones`` do
  not see them, and a package sees its parents' privates (``vltk_kernels/_dispatch.py`` serves all of
  ``vltk_kernels``, ``vltk/config.py``'s privates all of the core).

Imports are read from the AST of every file, so function-level imports, ``TYPE_CHECKING`` blocks and the string
targets of ``importlib.import_module("...")``, ``__import__("...")`` and ``lazy_factory("module", "attribute")``
count as well. Every violation is reported as ``file:line: import: rule``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CORE = "vltk"
KERNELS = "vltk_kernels"
PLUGIN_PACKAGES = ("vltk_plugins", "vltk_sample")
#: (folder that holds the top-level package, package name) for every tree the rules cover
TREES: tuple[tuple[Path, str], ...] = (
    (REPO, CORE),
    (REPO / "kernels", KERNELS),
    (REPO / "plugins", "vltk_plugins"),
    (REPO / "tests" / "sample_plugin", "vltk_sample"),
)
#: what a plugin may take from the top-level ``vltk`` module besides ``vltk.api`` itself
PLUGIN_NAMES_FROM_VLTK = frozenset({"hookimpl", "api"})
#: ``vltk_plugins.<kind>.<component>``: the deepest package that keeps its privates from its siblings
COMPONENT_DEPTH = 3


@dataclass(frozen=True)
class Import:
    """One import statement or import call: the module it reaches and the names it takes from it."""

    line: int
    module: str
    names: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"from {self.module} import {', '.join(self.names)}" if self.names else f"import {self.module}"


@dataclass(frozen=True)
class SourceModule:
    path: Path
    name: str
    is_package: bool

    @property
    def package(self) -> str:
        return self.name if self.is_package else self.name.rpartition(".")[0]


def source_modules(trees: Iterable[tuple[Path, str]]) -> Iterator[SourceModule]:
    """Every ``.py`` file of the trees with its dotted module name."""
    for base, package in trees:
        for path in sorted((base / package).rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            yield SourceModule(path=path, name=".".join(parts), is_package=is_package)


def _string_arguments(call: ast.Call) -> list[str]:
    return [arg.value for arg in call.args if isinstance(arg, ast.Constant) and isinstance(arg.value, str)]


def _called_name(call: ast.Call) -> str:
    function = call.func
    return function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")


def collect_imports(source: str, module: SourceModule) -> list[Import]:
    """All imports of one module, relative ones made absolute, in source order."""
    found: list[Import] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend(Import(node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                package = module.package.split(".")
                base = package[: len(package) - (node.level - 1)]
                target = ".".join([*base, target] if target else base)
            names = tuple(alias.name for alias in node.names if alias.name != "*")
            found.append(Import(node.lineno, target, names))
        elif isinstance(node, ast.Call):
            called, strings = _called_name(node), _string_arguments(node)
            if called in ("import_module", "__import__") and strings:
                found.append(Import(node.lineno, strings[0]))
            elif called == "lazy_factory" and len(strings) == 2:
                found.append(Import(node.lineno, strings[0], (strings[1],)))
    return sorted(found, key=lambda item: item.line)


def _is_private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _private_owner(dotted: str, packages: set[str]) -> str | None:
    """The package that owns the first private part of ``dotted`` (None when nothing in it is private)."""
    parts = dotted.split(".")
    index = next((i for i, part in enumerate(parts) if i and _is_private(part)), None)
    if index is None:
        return None
    holder = ".".join(parts[:index])
    if holder not in packages:  # a name inside a plain module belongs to the module's package
        holder = holder.rpartition(".")[0] or holder
    return ".".join(holder.split(".")[:COMPONENT_DEPTH])


def violations_of(module: SourceModule, imports: Iterable[Import], packages: set[str]) -> list[tuple[Import, str]]:
    """The rules above applied to one module's imports."""
    ours = {CORE, KERNELS, *PLUGIN_PACKAGES}
    top = module.name.split(".")[0]
    found = []
    for item in imports:
        target_top = item.module.split(".")[0]
        if top == CORE and target_top in (KERNELS, *PLUGIN_PACKAGES):
            found.append((item, "the core must not import the kernels or plugins"))
        elif top == KERNELS and target_top in (CORE, *PLUGIN_PACKAGES):
            found.append((item, "vltk_kernels must not import vltk or plugins (it works installed alone)"))
        elif top in PLUGIN_PACKAGES and target_top == CORE:
            allowed = item.module == "vltk.api" or (
                item.module == CORE and item.names and set(item.names) <= PLUGIN_NAMES_FROM_VLTK
            )
            if not allowed:
                found.append((item, "plugins import from the core only vltk.api"))
        if target_top not in ours:
            continue
        for name in item.names or ("",):
            dotted = f"{item.module}.{name}" if name else item.module
            owner = _private_owner(dotted, packages)
            if owner is not None and not _inside(module.name, owner):
                offending = Import(item.line, item.module, (name,) if name else ())
                found.append((offending, f"'{dotted}' is private to {owner}"))
    return found


def find_violations(trees: Iterable[tuple[Path, str]], relative_to: Path) -> list[str]:
    """``file:line: import: rule`` for every violation in the trees."""
    modules = list(source_modules(trees))
    packages = {module.name for module in modules if module.is_package}
    messages = []
    for module in modules:
        imports = collect_imports(module.path.read_text(encoding="utf-8"), module)
        for item, rule in violations_of(module, imports, packages):
            messages.append(f"{module.path.relative_to(relative_to)}:{item.line}: {item}: {rule}")
    return messages


def test_the_import_graph_keeps_its_layers() -> None:
    violations = find_violations(TREES, REPO)
    assert not violations, "layering violations:\n" + "\n".join(violations)


def test_every_tree_is_walked() -> None:
    names = {module.name for module in source_modules(TREES)}
    for expected in ("vltk.api", "vltk_kernels._dispatch", "vltk_plugins.rein.hooks", "vltk_sample.hooks"):
        assert expected in names


def _write(root: Path, relative: str, text: str = "") -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_the_walker_finds_each_kind_of_violation(tmp_path: Path) -> None:
    """A fabricated tree with one violation per rule (and look-alikes that are allowed): proof it can fail."""
    _write(tmp_path, "vltk/__init__.py", "from vltk.pipeline import build as _build\n")
    _write(tmp_path, "vltk/config.py", "_SECRET = 1\n")
    _write(
        tmp_path,
        "vltk/pipeline.py",
        "from vltk.config import _SECRET\n"  # ok: the core's own private
        "def build():\n"
        "    import vltk_plugins.a.m\n"  # 3: core -> plugins, function level
        "    return vltk_plugins\n",
    )
    _write(tmp_path, "vltk/cli/__init__.py", "from vltk.cli import _helpers\n")  # ok
    _write(tmp_path, "vltk/cli/_helpers.py", "from ..config import _SECRET\n")  # ok: parent's private
    _write(tmp_path, "vltk/models/__init__.py", "from vltk.cli._helpers import x\n")  # 1: a sibling's private
    _write(tmp_path, "vltk_kernels/__init__.py", "import importlib\nimportlib.import_module('vltk.errors')\n")  # 2
    _write(tmp_path, "vltk_kernels/_dispatch.py")
    _write(tmp_path, "vltk_kernels/op/__init__.py", "from vltk_kernels._dispatch import backend\n")  # ok
    _write(tmp_path, "vltk_plugins/__init__.py")
    _write(tmp_path, "vltk_plugins/kind/__init__.py")
    _write(tmp_path, "vltk_plugins/kind/_base.py", "BASE = 1\n")
    _write(tmp_path, "vltk_plugins/kind/a/__init__.py")
    _write(tmp_path, "vltk_plugins/kind/a/x.py", "_shared = 1\n")
    _write(tmp_path, "vltk_plugins/kind/a/inner/__init__.py")
    _write(tmp_path, "vltk_plugins/kind/a/inner/y.py", "from vltk_plugins.kind.a.x import _shared\n_deep = 2\n")  # ok
    _write(tmp_path, "vltk_plugins/kind/a/other/__init__.py")
    _write(tmp_path, "vltk_plugins/kind/a/other/z.py", "from ..inner.y import _deep\n")  # ok: same component
    _write(tmp_path, "vltk_plugins/kind/b/__init__.py")
    _write(
        tmp_path,
        "vltk_plugins/kind/b/m.py",
        "from vltk_plugins.kind import _base\n"  # ok: the kind folder's private, seen by its components
        "from ..a.x import _shared\n",  # 2: a sibling component's private, written relatively
    )
    _write(tmp_path, "vltk_plugins/paper/__init__.py")
    _write(
        tmp_path,
        "vltk_plugins/paper/hooks.py",
        "from vltk.api import hookimpl, lazy_factory\n"  # ok
        "from vltk import hookimpl\n"  # ok (tolerated)
        "from vltk.registry import Registry\n"  # 3: plugin -> core internals
        "from vltk_plugins.paper.sub import _mine\n"  # ok: its own
        "from vltk_plugins.kind.a.x import _shared\n"  # 5: a component's private
        "from vltk_kernels import _dispatch\n"  # 6: a private kernels module
        "lazy_factory('vltk_plugins.kind.b.m', '_build')\n"  # 7: a private factory
        "from .sub import _mine\n"  # ok
        "import vltk\n",  # 9: the whole core
    )
    _write(tmp_path, "vltk_plugins/paper/sub.py", "_mine = 1\n")
    trees = [(tmp_path, CORE), (tmp_path, KERNELS), (tmp_path, "vltk_plugins")]
    found = sorted(message.split(": ")[0] for message in find_violations(trees, tmp_path))
    assert found == sorted(
        [
            "vltk/pipeline.py:3",
            "vltk/models/__init__.py:1",
            "vltk_kernels/__init__.py:2",
            "vltk_plugins/kind/b/m.py:2",
            "vltk_plugins/paper/hooks.py:3",
            "vltk_plugins/paper/hooks.py:5",
            "vltk_plugins/paper/hooks.py:6",
            "vltk_plugins/paper/hooks.py:7",
            "vltk_plugins/paper/hooks.py:9",
        ]
    )
    messages = "\n".join(find_violations(trees, tmp_path))
    assert "vltk_plugins/kind/b/m.py:2: from vltk_plugins.kind.a.x import _shared: " in messages
    assert "'vltk_plugins.kind.a.x._shared' is private to vltk_plugins.kind.a" in messages
    assert "vltk_kernels/__init__.py:2: import vltk.errors: vltk_kernels must not import vltk" in messages
