"""Run configuration: pydantic models, YAML recipes, dotted ``key=value`` overrides, per-component validation.

A run is described by one YAML mapping (a *recipe*) plus command-line changes. The top level is validated by
:class:`RunConfig` (``extra="forbid"``); each component section holds ``name`` plus that component's options,
which only the component's own options model can validate — so :func:`resolve` looks the name up in the
registry, validates the options, and writes the defaults back. The result is what goes to
``config.resolved.yaml`` and what ``--dry-run`` prints: every knob that affected the run, spelled out.

Nothing here imports torch.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vltk.errors import UserError, did_you_mean
from vltk.registry import Registry, format_validation_error
from vltk.resolved import ResolvedComponent, ResolvedRun

CORE_RECIPES = Path(__file__).parent / "recipes"
DEFAULT_RECIPE = "default"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ComponentConfig(BaseModel):
    """``name`` of a registered component plus its options (validated later by the component's own model)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(description="registered component name, see `vltk list`")

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class EmaConfig(_Strict):
    """An exponential moving average of the weights (timm's ModelEmaV3), evaluated and saved in their place."""

    decay: float = Field(0.9999, gt=0, lt=1, description="EMA decay per optimizer step (timm/mmdet: 0.9998-0.9999)")
    warmup: bool = Field(
        True,
        description="timm's warm-up: decay min(decay, 1 - (1 + step)^-warmup_power), so short runs average too",
    )
    warmup_power: float = Field(2 / 3, gt=0, description="exponent of the warm-up (timm: 2/3; 3/4 for long runs)")


class TrainConfig(_Strict):
    """Optimisation settings (AdamW or SGD, linear warm-up, poly or step decay; iteration based, as mmseg)."""

    iters: int = Field(300, ge=1, description="number of optimizer steps (schedules count these)")
    batch_size: int = Field(
        4,
        ge=1,
        description="images per forward pass over all processes (micro-batch; split evenly over DDP ranks); one "
        "optimizer step sees batch_size x accumulate_steps",
    )
    accumulate_steps: int = Field(
        1, ge=1, description="micro-batches whose gradients add up to one optimizer step (effective batch)"
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="autocast dtype of forward and loss (fp16 adds a GradScaler); weights stay fp32"
    )
    ema: EmaConfig | None = Field(None, description="EMA of the weights, e.g. train.ema.decay=0.999 (None: off)")
    lr: float = Field(1e-4, gt=0, description="base learning rate")
    optimizer: Literal["adamw", "sgd"] = Field(
        "adamw", description="adamw (mmseg-style segmentation) or sgd (detectron2-style detection, CLIP the Gap)"
    )
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (ignored by adamw)")
    weight_decay: float = Field(0.05, ge=0, description="weight decay (0 for norms, tokens, embeddings)")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon")
    warmup_iters: int = Field(0, ge=0, description="linear warm-up steps (lr from warmup_ratio*lr to lr)")
    warmup_ratio: float = Field(1e-6, ge=0, le=1, description="lr factor at the first warm-up step")
    poly_power: float = Field(0.9, ge=0, description="poly schedule exponent: lr*(1-t/T)^power")
    min_lr: float = Field(0.0, ge=0, description="floor of the poly schedule")
    schedule: Literal["poly", "step"] = Field(
        "poly", description="poly: lr*(1-t/T)^poly_power; step: lr*gamma^(number of `steps` passed), as detectron2"
    )
    steps: list[int] = Field(default_factory=list, description="iterations where the step schedule multiplies by gamma")
    gamma: float = Field(0.1, gt=0, le=1, description="factor of the step schedule")
    decoder_lr_mult: float = Field(1.0, gt=0, description="lr multiplier for the decoder (and prompter)")
    grad_clip: float | None = Field(None, gt=0, description="clip the global gradient norm (None: off)")
    compile: bool = Field(
        False,
        description="torch.compile the model's forward (inductor: C++ on CPU, Triton on CUDA); the first steps "
        "pay the compilation, see benchmarks/compile_step.py for when it pays off",
    )
    compile_backend: str = Field(
        "inductor", description="torch.compile backend with train.compile (inductor; aot_eager or eager to debug)"
    )
    log_interval: int = Field(10, ge=1, description="steps between log lines when no progress bar is shown")
    eval_interval: int = Field(0, ge=0, description="steps between evaluations (0: only at the end)")
    checkpoint_interval: int = Field(100, ge=1, description="steps between last.pt checkpoints")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")


class EvalConfig(_Strict):
    """Evaluation settings."""

    batch_size: int = Field(8, ge=1, description="images per evaluation step")
    max_images: int | None = Field(None, ge=1, description="evaluate at most this many images per domain")
    overlays: int = Field(2, ge=0, description="prediction overlay PNGs written per domain")
    ap_interpolation: Literal["11point", "101point", "area"] = Field(
        "11point", description="detection AP: VOC2007 11-point (DWD papers), COCO-style 101-point, or VOC2010+ area"
    )
    mode: Literal["whole", "slide"] = Field(
        "whole", description="whole: one pass per image; slide: windows of crop_size at stride, scores averaged"
    )
    crop_size: int | tuple[int, int] = Field(
        512, description="slide window size, one int or [height, width] (mmseg crop_size; Rein/DenseCLIP: 512)"
    )
    stride: int | tuple[int, int] = Field(
        341, description="slide window step, one int or [height, width], at most crop_size (Rein/DenseCLIP: 341)"
    )

    flip: bool = Field(
        False, description="test-time augmentation: also predict the mirrored image and average the probabilities"
    )
    scales: tuple[float, ...] = Field(
        (1.0,),
        description="test-time augmentation: resize factors of the image, probabilities averaged over them "
        "(mmseg's multi-scale test: [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]); [1.0] = no resizing",
    )

    @model_validator(mode="after")
    def _check_window(self) -> EvalConfig:
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(f"scales must be a non-empty list of positive factors, got {list(self.scales)}")
        crop = (self.crop_size,) * 2 if isinstance(self.crop_size, int) else tuple(self.crop_size)
        stride = (self.stride,) * 2 if isinstance(self.stride, int) else tuple(self.stride)
        if min(crop) < 1 or min(stride) < 1:
            raise ValueError(f"crop_size and stride must be positive, got {self.crop_size} and {self.stride}")
        if stride[0] > crop[0] or stride[1] > crop[1]:
            raise ValueError(f"stride {self.stride} must not exceed crop_size {self.crop_size}: pixels would be missed")
        return self


class RunConfig(_Strict):
    """One training or evaluation run. Component sections are ``{name: ..., <options>}``.

    No field default names a component (those belong to plugins): a recipe that leaves out ``adapter`` or
    ``dataset`` gets the default recipe's section (:func:`build_config`).
    """

    task: Literal["segmentation", "detection", "pretrain"] = Field(
        "segmentation",
        description=(
            "what the model predicts: label maps (segmentation), boxes (detection), or an image-text "
            "foundation (pretrain)"
        ),
    )
    backbone: ComponentConfig
    adapter: ComponentConfig
    prompter: ComponentConfig | None = None
    decoder: ComponentConfig
    augmenters: list[ComponentConfig] = Field(default_factory=list)
    dataset: ComponentConfig
    loggers: list[ComponentConfig] = Field(
        default_factory=list, description="experiment loggers (`vltk list loggers`), e.g. [jsonl, tensorboard]"
    )
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    seed: int = Field(0, description="seed for weights, data order and augmentation")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = cuda when available")
    output: str | None = Field(None, description="run folder (default runs/<recipe>)")
    recipe: str | None = Field(None, description="name of the recipe this run started from")

    @field_validator("augmenters", "loggers", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return [] if value is None else value

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# --------------------------------------------------------------------------------------------------- recipes


def available_recipes(recipe_dirs: list[tuple[str, str]]) -> dict[str, Path]:
    """Recipe name -> file: ``default`` & co. from the core, ``<plugin>/<stem>`` from plugins."""
    found: dict[str, Path] = {}
    for path in sorted(CORE_RECIPES.glob("*.yaml")):
        found[path.stem] = path
    for plugin, folder in recipe_dirs:
        for path in sorted(Path(folder).glob("*.yaml")):
            found[f"{plugin}/{path.stem}"] = path
    return found


def recipe_description(path: Path, limit: int = 110) -> str:
    """The first sentence of a recipe's leading comment (what ``vltk list recipes`` shows); empty without one."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    block = []
    for line in lines:
        stripped = line.strip()
        if not stripped.startswith("#"):
            break
        block.append(stripped.lstrip("#").strip())
    text = " ".join(part for part in block if part)
    end = text.find(". ")
    text = text[: end + 1] if end >= 0 else text
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def load_recipe(recipe: str | None, recipe_dirs: list[tuple[str, str]]) -> tuple[dict[str, Any], str]:
    """Load a recipe by name or path; return ``(mapping, recipe name)``. Unknown names suggest the closest."""
    recipe = recipe or DEFAULT_RECIPE
    path = Path(recipe)
    if recipe.endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise UserError(f"recipe file '{recipe}' does not exist")
        name = path.stem
    else:
        known = available_recipes(recipe_dirs)
        # plugin names are written with hyphens (clip-gap), Python folders with underscores (clip_gap): accept both
        recipe = next((name for name in known if name.replace("_", "-") == recipe.replace("_", "-")), recipe)
        if recipe not in known:
            raise UserError(
                f"unknown recipe '{recipe}';{did_you_mean(recipe, known)} available: {', '.join(sorted(known))}"
            )
        path, name = known[recipe], recipe
    return read_yaml_mapping(path, what="recipe"), name


def read_yaml_mapping(path: Path, *, what: str) -> dict[str, Any]:
    """A YAML file whose top level is a mapping (a recipe, a run's ``config.resolved.yaml``).

    Unreadable bytes, bad YAML and other top-level types are one :class:`UserError` naming the file.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise UserError(
            f"{what} '{path}' is not UTF-8 text (byte {error.start} cannot be decoded); save it as UTF-8"
        ) from None
    except OSError as error:
        raise UserError(f"{what} '{path}' cannot be read: {error.strerror or error}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise UserError(f"{what} '{path}' is not valid YAML: {' '.join(str(error).split())}") from None
    if not isinstance(data, dict):
        raise UserError(f"{what} '{path}' must be a YAML mapping at the top level")
    return data


# ------------------------------------------------------------------------------------------------- overrides


def parse_override(token: str) -> tuple[list[str], Any]:
    """``train.lr=1e-4`` -> (["train", "lr"], 1e-4). Values are YAML (lists, numbers, null, strings)."""
    if "=" not in token:
        raise UserError(f"cannot read override '{token}': write KEY=VALUE, e.g. train.iters=100")
    key, raw = token.split("=", 1)
    parts = key.strip().split(".")
    if not key.strip():
        raise UserError(f"override '{token}' has an empty key")
    if not all(part.strip() for part in parts):
        raise UserError(
            f"override '{token}' has an empty part in its key (a dot too many?); write dotted keys like train.iters=3"
        )
    parts = [part.strip() for part in parts]
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, _coerce_number(value)


def _coerce_number(value: Any) -> Any:
    """PyYAML reads ``1e-4`` as a string (YAML 1.1 wants ``1.0e-4``); users mean a number."""
    if isinstance(value, str):
        try:
            return float(value) if any(ch in value.lower() for ch in "e.") and value.strip() else value
        except ValueError:
            return value
    return value


def apply_override(data: dict[str, Any], parts: list[str], value: Any) -> None:
    """Set ``data[a][b][...] = value`` creating mappings on the way; list items are addressed by index."""
    node: Any = data
    for depth, part in enumerate(parts[:-1]):
        key: Any = int(part) if isinstance(node, list) and part.isdigit() else part
        if isinstance(node, list):
            if not isinstance(key, int) or key >= len(node):
                raise UserError(f"override key '{'.'.join(parts)}': no item {part} in '{'.'.join(parts[:depth])}'")
        elif key not in node or node[key] is None:
            node[key] = {}
        elif not isinstance(node[key], (dict, list)):
            node[key] = {"name": node[key]} if depth == 0 else {}
        node = node[key]
    last: Any = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise UserError(f"override key '{'.'.join(parts)}': no item {last}")
        last = int(last)
    elif not isinstance(node, dict):
        raise UserError(f"override key '{'.'.join(parts)}' goes inside a value that is not a mapping")
    node[last] = value


def set_component(data: dict[str, Any], section: str, name: str) -> None:
    """``--adapter rein``: switch the section's component; keep its options only when the name is unchanged."""
    current = data.get(section)
    if isinstance(current, dict) and current.get("name") == name:
        return
    data[section] = {"name": name}


def _normalise_sections(data: dict[str, Any]) -> dict[str, Any]:
    """Allow the short form ``backbone: eva02`` for ``backbone: {name: eva02}``."""
    data = copy.deepcopy(data)
    for section in ("backbone", "adapter", "prompter", "decoder", "dataset"):
        if isinstance(data.get(section), str):
            data[section] = {"name": data[section]}
    for section in LIST_SECTIONS:
        if isinstance(data.get(section), list):
            data[section] = [{"name": item} if isinstance(item, str) else item for item in data[section]]
    return data


#: Sections that are lists of components (written ``[a, b]`` or ``[{name: a, ...}]``).
LIST_SECTIONS: tuple[str, ...] = ("augmenters", "loggers")


#: Sections a recipe may leave out: they come from the default recipe (the core's defaults are data, not code).
DEFAULTED_SECTIONS: tuple[str, ...] = ("adapter", "dataset")
#: Lists that come from the default recipe only when a recipe does not mention them (``loggers: []`` means none).
DEFAULTED_LISTS: tuple[str, ...] = ("loggers",)
#: ``<task>.yaml`` here says what that task changes on a recipe written for another task (see :func:`_task_defaults`).
TASK_DEFAULTS = CORE_RECIPES / "tasks"


def build_config(
    recipe: str | None = None,
    *,
    components: dict[str, Any] | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    recipe_dirs: list[tuple[str, str]] | None = None,
    base: dict[str, Any] | None = None,
) -> RunConfig:
    """Recipe (or ``base``) + component flags + ``key=value`` overrides -> validated :class:`RunConfig`.

    ``components`` maps section names to component names (``{"adapter": "rein", "augmenters": [...]}``).
    Component options are not checked here: :func:`resolve` does that against the registry, once.
    """
    if base is None:
        data, name = load_recipe(recipe, recipe_dirs or [])
        data.setdefault("recipe", name)
    else:
        data = copy.deepcopy(base)
    data = _normalise_sections(data)
    _default_sections(data)
    for section, value in (components or {}).items():
        if value is None or value == () or value == []:
            continue
        if section == "task":
            data["task"] = value
        elif section == "augmenters":
            current = data.get("augmenters") or []
            data["augmenters"] = [  # keep a recipe's options when the same augmenter sits at the same place
                current[index] if index < len(current) and current[index].get("name") == item else {"name": item}
                for index, item in enumerate(value)
            ]
        elif section == "loggers":
            current = {item.get("name"): item for item in data.get("loggers") or []}
            data["loggers"] = [current.get(item, {"name": item}) for item in value]  # a listed logger keeps options
        else:
            set_component(data, section, value)
    parsed = [parse_override(token) for token in overrides]  # each token is read once
    given = {key for key, value in (components or {}).items() if value not in (None, (), [])}
    given |= {parts[0] for parts, _ in parsed if parts in (["dataset"], ["dataset", "name"])}
    _task_defaults(data, given=given)  # before the overrides, so `dataset.size=...` lands in the swapped dataset
    for parts, value in parsed:
        apply_override(data, parts, value)
        data = _normalise_sections(data)  # `loggers=[a, b]` then `loggers.1.folder=x` reaches a mapping
    _task_defaults(data, given=given)  # again, for `task=detection` given as an override
    return validate_run_config(data)


def _default_sections(data: dict[str, Any]) -> None:
    """Fill the :data:`DEFAULTED_SECTIONS` a recipe left out from the default recipe."""
    missing = [section for section in DEFAULTED_SECTIONS if not data.get(section)]
    missing += [section for section in DEFAULTED_LISTS if data.get(section) is None]
    if missing:
        default, _ = load_recipe(DEFAULT_RECIPE, [])
        default = _normalise_sections(default)
        for section in missing:
            data[section] = copy.deepcopy(default.get(section) or [])


def _task_defaults(data: dict[str, Any], given: set[str]) -> None:
    """A task's changes to a recipe written for another task, read from ``recipes/tasks/<task>.yaml``.

    ``task: detection`` on top of a segmentation recipe (e.g. ``default``): the file's ``datasets`` mapping swaps
    a label-map dataset for its boxed twin (``synthetic`` -> ``synthetic-det``) unless a flag or a ``dataset=``
    override named the dataset, and its ``prompter`` section fills a missing prompter (text-classified detection
    heads need class embeddings). The names are data, so the core names no plugin component.
    """
    path = TASK_DEFAULTS / f"{data.get('task', 'segmentation')}.yaml"
    if not path.is_file():
        return
    defaults = yaml.safe_load(path.read_text()) or {}
    dataset = data.get("dataset") or {}
    swap = (defaults.get("datasets") or {}).get(dataset.get("name"))
    if "dataset" not in given and swap:
        data["dataset"] = {"name": swap}
    if not data.get("prompter") and defaults.get("prompter"):
        data["prompter"] = copy.deepcopy(defaults["prompter"])


def validate_run_config(data: dict[str, Any]) -> RunConfig:
    """The top level of a run (component options are checked by :func:`resolve`); misspelt keys get a suggestion."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as error:
        raise UserError(format_validation_error(error, "", suggest=_suggest_key)) from None


def _suggest_key(loc: tuple[Any, ...]) -> str:
    """`` did you mean 'train.iters'?`` for an unknown key of the run config or of one of its sections."""
    model: type[BaseModel] = RunConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""
        model = annotation
    prefix = ".".join(str(part) for part in loc[:-1])
    hint = did_you_mean(str(loc[-1]), list(model.model_fields))
    if not hint:
        return f" {prefix or 'top-level'} keys: {', '.join(model.model_fields)}"
    close = hint.split("'")[1]
    return hint.replace(close, f"{prefix}.{close}" if prefix else close)


def resolve(config: RunConfig | ResolvedRun, registry: Registry) -> ResolvedRun:
    """Look every component up (did-you-mean on typos) and validate its options — the one validation of a run.

    Returns a frozen :class:`~vltk.resolved.ResolvedRun`: per section the component's spec and validated options
    object (what factories get), and the :class:`RunConfig` with every default written back (what
    ``config.resolved.yaml`` holds). A run that is already resolved is returned as it is.
    """
    if isinstance(config, ResolvedRun):
        return config
    data = config.to_dict()
    resolved: dict[str, Any] = {}
    for section, kind in SECTION_KINDS.items():
        component: ComponentConfig | None = getattr(config, section)
        if component is None:
            resolved[section] = None
            continue
        resolved[section] = _resolve_component(registry, kind, component, section)
        data[section] = resolved[section].to_dict()
    augmenters = tuple(
        _resolve_component(registry, "augmenter", item, f"augmenters.{index}")
        for index, item in enumerate(config.augmenters)
    )
    data["augmenters"] = [item.to_dict() for item in augmenters]
    loggers = tuple(
        _resolve_component(registry, "logger", item, f"loggers.{index}") for index, item in enumerate(config.loggers)
    )
    names = [item.name for item in loggers]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UserError(f"loggers lists '{repeated[0]}' twice; give each logger once (loggers: {names})")
    data["loggers"] = [item.to_dict() for item in loggers]
    return ResolvedRun(config=validate_run_config(data), augmenters=augmenters, loggers=loggers, **resolved)


#: Component sections of a run config and the kind of component each holds (``augmenters`` is a list of them).
SECTION_KINDS: dict[str, str] = {
    "backbone": "backbone",
    "adapter": "adapter",
    "prompter": "prompter",
    "decoder": "decoder",
    "dataset": "dataset",
}


def _resolve_component(registry: Registry, kind: str, component: ComponentConfig, where: str) -> ResolvedComponent:
    spec = registry.get(kind, component.name)
    return ResolvedComponent(section=where, spec=spec, options=spec.validate(component.options(), where=where))


def to_yaml(config: RunConfig | ResolvedRun) -> str:
    """The YAML of ``config.resolved.yaml`` and ``--dry-run``."""
    if isinstance(config, ResolvedRun):
        config = config.config
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
