"""The only place vltk's hook specifications live.

Every component vltk knows about — including the built-in ones — arrives through these hooks from a module
named in the ``vltk`` entry-point group. A plugin implements any subset of them::

    # vltk_myplugin/hooks.py  (entry point:  [project.entry-points.vltk] myplugin = "vltk_myplugin.hooks")
    from vltk.api import Register, hookimpl, lazy_factory
    from vltk_myplugin.options import MyOptions          # light: pydantic only, no torch here


    @hookimpl
    def vltk_register_adapters(register: Register) -> None:
        # the adapter module (and torch) is imported only when a run builds the adapter
        register(
            "my-adapter",
            lazy_factory("vltk_myplugin.adapter", "build_my_adapter"),
            options=MyOptions,
            summary="What it does",
            paper="Where it comes from",
        )

Registration hooks take a ``register`` callback rather than returning objects so that one hook can add many
components, names are checked for duplicates at registration time (the error names both plugins), and
nothing is built until a run asks for it. Keep hook modules light: ``vltk list`` and ``vltk --help`` import
every one of them. The callback's signature is :class:`Register`; a keyword it does not know (``sumary=``) is
an error naming the plugin, the component and the closest keyword, never silently dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:  # the options module imports pydantic; hook specs stay importable without it
    from vltk.options import Options

hookspec = pluggy.HookspecMarker("vltk")
hookimpl = pluggy.HookimplMarker("vltk")


class Register(Protocol):
    """The ``register`` callback handed to every ``vltk_register_<kind>s`` hook, bound to one kind and one plugin.

    ``name`` is what users type (``--adapter NAME``); ``factory`` builds the component from its validated
    options object and the :class:`vltk.api.BuildContext` the pipeline has grown so far (write it as
    ``build_x(options: XOptions, context: BuildContext)``; wrap it in :func:`vltk.api.lazy_factory` so that
    registering imports nothing heavy); ``options`` is a :class:`vltk.api.Options` subclass (pydantic,
    ``extra="forbid"``) whose fields are the component's knobs, :class:`vltk.api.NoOptions` when omitted;
    ``summary`` and ``paper`` are what ``vltk list`` and ``vltk show`` print.
    """

    def __call__(
        self,
        name: str,
        factory: Callable[..., Any],
        *,
        options: type[Options] | None = None,
        summary: str = "",
        paper: str = "",
    ) -> None: ...


@hookspec
def vltk_register_backbones(register: Register) -> None:
    """Register backbones (``--backbone``).

    A backbone factory returns a :class:`vltk.interfaces.Backbone`: a wrapped open_clip/timm model that calls
    block hooks after every block and returns a 4-level pyramid. Example::

        @hookimpl
        def vltk_register_backbones(register):
            register("my-vit", build_my_vit, options=MyViTOptions, summary="ViT-S from my lab", paper="arXiv:...")
    """


@hookspec
def vltk_register_adapters(register: Register) -> None:
    """Register adapters (``--adapter``): what of the backbone trains, and per-block refinement.

    A factory returns a :class:`vltk.interfaces.Adapter`; it receives the backbone facts as context
    (``embed_dim``, ``num_layers``, ``patch_size``, ``has_cls_token``). Example::

        @hookimpl
        def vltk_register_adapters(register):
            register("bias-only", build_bias_only, options=BiasOnlyOptions, summary="BitFit")
    """


@hookspec
def vltk_register_prompters(register: Register) -> None:
    """Register prompters (``--prompter``): class names -> text embeddings ``[K, D]`` or ``[B, K, D]``.

    Example::

        @hookimpl
        def vltk_register_prompters(register):
            register("my-templates", build_templates, options=TemplateOptions, summary="ensembled templates")
    """


@hookspec
def vltk_register_decoders(register: Register) -> None:
    """Register decoders (``--decoder``): pyramid (+ queries, + text) -> predictions, with their own loss.

    A factory returns a :class:`vltk.interfaces.Decoder` and receives ``in_channels``, ``num_classes``,
    ``ignore_index`` and, when available, ``query_dims`` and ``text_dim``. Example::

        @hookimpl
        def vltk_register_decoders(register):
            register("linear", build_linear_head, options=LinearOptions, summary="1x1 conv on stride 16")
    """


@hookspec
def vltk_register_augmenters(register: Register) -> None:
    """Register augmenters (``--augmenter``, repeatable): image-stage or feature-stage training augmentation.

    Example::

        @hookimpl
        def vltk_register_augmenters(register):
            register("colour-jitter", build_jitter, options=JitterOptions, summary="photometric jitter")
    """


@hookspec
def vltk_register_datasets(register: Register) -> None:
    """Register datasets (``--dataset``). A factory returns a :class:`vltk.data.base.DenseDataSource`.

    Example::

        @hookimpl
        def vltk_register_datasets(register):
            register("my-city", build_my_city, options=MyCityOptions, summary="my street scenes, 12 classes")
    """


@hookspec
def vltk_register_loggers(register: Register) -> None:
    """Register experiment loggers (the run config's ``loggers:`` list, e.g. ``loggers: [jsonl, tensorboard]``).

    A factory ``build_x(options, context)`` gets a :class:`vltk.api.LoggerContext` (run folder, configuration,
    start step) and returns a :class:`vltk.api.ExperimentLogger`; it must not write anything (the run's checks
    are not over yet) and should raise :class:`vltk.api.UserError` when a package it needs is missing. Import the
    tracking library inside the factory's module, never in the hook module. Example::

        @hookimpl
        def vltk_register_loggers(register):
            register("csv", lazy_factory("my_pkg.csv_logger", "build_csv"), summary="scalars as CSV")
    """


@hookspec
def vltk_register_commands(cli: Any) -> None:
    """Add subcommands to the ``vltk`` click group. Keep imports inside the command functions.

    Example::

        @hookimpl
        def vltk_register_commands(cli):
            @cli.command("hello")
            def hello():
                print("hi")
    """


@hookspec
def vltk_recipe_dirs() -> list[str]:
    """Return folders holding recipe YAML files; ``--recipe PLUGIN/NAME`` finds ``<folder>/NAME.yaml``.

    The recipe's full name is ``<plugin name>/<file stem>`` (e.g. ``rein/synthetic``). Example::

        @hookimpl
        def vltk_recipe_dirs():
            return [str(pathlib.Path(__file__).parent / "recipes")]
    """


@hookspec
def vltk_register_bench_cases(register: Callable[[Any], None]) -> None:
    """Add benchmark cases to ``vltk bench``: ``register(case)`` with a ``vltk_kernels.benchmarking.BenchCase``.

    A case names its shapes, builds inputs for a shape, and maps implementation names to callables; the one
    named ``torch`` (the case's ``baseline``) is what the others are timed and checked against. Imports belong
    inside the hook (it only runs when ``vltk bench`` does). The built-in ops' cases arrive the same way (from
    the ``kernels`` plugin); a name already taken (by a built-in op or another plugin) is an error naming both.
    Example::

        @hookimpl
        def vltk_register_bench_cases(register):
            import torch
            from vltk_kernels.benchmarking import BenchCase, Shape

            def make_inputs(dims, device, dtype):
                return (torch.randn(dims["B"], dims["N"], dims["C"], device=device, dtype=dtype),)

            register(BenchCase(
                name="my_layernorm",
                shapes=(Shape("small", {"B": 2, "N": 1024, "C": 768}),),
                make_inputs=make_inputs,
                implementations={"torch": lambda x: torch.nn.functional.layer_norm(x, x.shape[-1:]),
                                 "fused": my_fused_layernorm},
            ))
    """


@hookspec
def vltk_user_error_types() -> list[type[BaseException]]:
    """Return exception types a plugin's components raise that mean "fix your input"; the CLI prints them as one
    ``Error: ...`` line with exit code 2, like :class:`vltk.errors.UserError`, instead of a traceback.

    For libraries that stand alone and so cannot subclass ``UserError`` (the core may not import them either).
    Import inside the hook to keep the hook module light. Example::

        @hookimpl
        def vltk_user_error_types():
            from my_ops.errors import MyBackendError

            return [MyBackendError]
    """


@hookspec
def vltk_release_formats() -> list[Any]:
    """Return the released-checkpoint formats a plugin reads: the files a paper's authors published (an mmseg
    or detectron2 checkpoint, a PyTorch Lightning file, a Hugging Face model), which ``vltk convert`` rewrites
    and ``vltk eval --checkpoint`` / ``vltk predict --checkpoint`` read directly, converting in memory.

    Each format is an object with ``name`` (what ``vltk convert --from NAME`` takes), ``title`` (one line naming
    the paper and the layout, for errors and ``vltk convert``) and ``convert(path, hints)``: the vltk checkpoint
    the file holds (a dict with ``model``, ``config``, ``class_names``, ``backbone_included`` and a ``release``
    record of what was renamed and dropped), or ``None`` when the file is not of this format (so the next format
    is tried). ``hints`` is a dict of what the caller knows (``backbone_weights``: the file given with
    ``--backbone-weights``). A file that is of the format but cannot be converted raises
    :class:`vltk.errors.UserError`. Example::

        @hookimpl
        def vltk_release_formats():
            from my_plugin.release import MY_PAPER_RELEASE  # import torch-free; convert() imports torch

            return [MY_PAPER_RELEASE]
    """


@hookspec
def vltk_builtin_weights() -> list[Any]:
    """Return the weights files a package ships, addressed as ``backbone.pretrained=builtin:<name>``: nothing is
    downloaded, so a pretrained starting point must come inside an installed package.

    Each item is a :class:`vltk.api.BuiltinWeights` (name, file path, its sha256, the backbones and variant it
    fits, a summary, the command that reproduces it and its evaluation numbers); ``vltk list weights`` and
    ``vltk show backbone NAME`` list them, and the file is checked against its sha256 before it is read. Keep
    the hook light (no torch): read the record, not the weights. Example::

        @hookimpl
        def vltk_builtin_weights():
            from vltk.api import BuiltinWeights

            here = Path(__file__).parent / "weights"
            return [BuiltinWeights("my-tiny-clip", here / "my-tiny-clip.safetensors", sha256="…",
                                   backbones=("eva02",), variant="tiny")]
    """
