"""Iteration-based training and per-domain evaluation (AdamW, warm-up + poly, atomic checkpoints, exact resume).

The loop is plain PyTorch so that a researcher can read it top to bottom. Nothing is written before everything
that can be checked has been (the output folder, every data split, the resume checkpoint's fit with the model:
:mod:`vltk.engine.preflight`); then the run folder gets ``config.resolved.yaml`` and ``environment.json``,
``last.pt`` (+ ``last.prev.pt``) every ``checkpoint_interval`` steps, before the final evaluation and at the end,
``best.pt`` when the task's selection score improves, ``metrics.json`` (history + final results), ``curves.png``
and ``overlays/<domain>_<i>.png``. Ctrl-C and SIGTERM stop at a step boundary (:mod:`vltk.engine.interrupts`), and
a checkpoint holds every RNG and the position in the data order, so a resumed run continues exactly.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import ConcatDataset, Dataset

from vltk.config import RunConfig, to_yaml
from vltk.engine.batches import EpochBatches
from vltk.engine.checkpoint import (
    load_model_state,
    load_resume_checkpoint,
    model_state_for_checkpoint,
    previous_path,
    restore_rng_state,
    rng_state,
    save_atomic,
)
from vltk.engine.ema import ema_for_run, evaluating_with, resume_ema
from vltk.engine.interrupts import Interrupted, StopSignals
from vltk.engine.precision import MixedPrecision, accumulate_gradients, micro_batches_done
from vltk.engine.preflight import check_data_source, check_output_folder, make_output_folder
from vltk.engine.report import to_json
from vltk.engine.run_folder import CHANGES_NAME, RunLock, record_changes, remove_unfinished_saves, resume_command
from vltk.errors import UserError
from vltk.resolved import ResolvedRun

NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)
NO_DECAY_NAME_PARTS = (
    "pos_embed",
    "positional_embedding",
    "cls_token",
    "class_embedding",
    "query_embed",
    "level_embed",
    "rope",
    "mask_token",
    "reg_token",
)


def environment() -> dict[str, Any]:
    """Versions and loaded plugins, saved beside the config so a run can be reproduced later."""
    import platform

    from vltk import __version__
    from vltk.plugins import get_plugin_manager

    return {
        "vltk": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "plugins": {
            info.name: {"distribution": info.distribution, "version": info.version}
            for info in get_plugin_manager().plugins()
        },
    }


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda was requested but no CUDA device is available; use device=cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_param_groups(model: nn.Module, config: RunConfig) -> list[dict[str, Any]]:
    """AdamW groups from the trainable parameters only.

    No weight decay on normalisation layers, embeddings/tokens (by name), the adapter's own no-decay names
    (Rein's tokens and scale) and 1-d biases of norms; lr multipliers come from the adapter for backbone
    parameters (layer-wise decay of ``full``) and from ``train.decoder_lr_mult`` for decoder and prompter.
    """
    train = config.train
    norm_params = {
        id(parameter)
        for module in model.modules()
        if isinstance(module, NORM_TYPES) or type(module).__name__.lower().endswith("norm")
        for parameter in module.parameters(recurse=False)
    }
    adapter_no_decay = {f"adapter.{name}" for name in model.adapter.no_weight_decay_names()}
    backbone_mults = {f"backbone.{k}": v for k, v in model.adapter.backbone_lr_multipliers(model.backbone).items()}
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        no_decay = (
            id(parameter) in norm_params
            or name in adapter_no_decay
            or any(part in name for part in NO_DECAY_NAME_PARTS)
        )
        if name.startswith(("decoder.", "prompter.")):
            lr_mult = train.decoder_lr_mult
        else:
            lr_mult = backbone_mults.get(name, 1.0)
        key = (lr_mult, 0.0 if no_decay else train.weight_decay)
        groups.setdefault(key, []).append(parameter)
    if not groups:
        raise UserError("nothing to train: the adapter froze every parameter and the decoder has none")
    return [
        {"params": params, "lr": train.lr * lr_mult, "lr_mult": lr_mult, "weight_decay": decay}
        for (lr_mult, decay), params in sorted(groups.items())
    ]


def lr_factor(step: int, config: RunConfig) -> float:
    """Linear warm-up from ``warmup_ratio`` then poly decay to ``min_lr`` or, with ``schedule: step``, a factor
    ``gamma`` at every iteration of ``steps`` already reached (detectron2's WarmupMultiStepLR)."""
    train = config.train
    if train.schedule == "step":
        factor = train.gamma ** sum(1 for milestone in train.steps if step >= milestone)
    else:
        progress = min(step, train.iters) / train.iters
        min_factor = train.min_lr / train.lr
        factor = (1.0 - min_factor) * (1.0 - progress) ** train.poly_power + min_factor
    if train.warmup_iters and step < train.warmup_iters:
        factor *= train.warmup_ratio + (1.0 - train.warmup_ratio) * step / train.warmup_iters
    return factor


def build_optimizer(model: nn.Module, config: RunConfig) -> torch.optim.Optimizer:
    """``train.optimizer``: AdamW (betas, eps) or SGD with ``train.momentum``, over :func:`build_param_groups`."""
    train = config.train
    groups = build_param_groups(model, config)
    if train.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=train.lr, momentum=train.momentum)
    return torch.optim.AdamW(groups, lr=train.lr, betas=train.betas, eps=train.eps)


class Trainer:
    """Owns a run folder: builds data and model, trains, evaluates, writes everything a run leaves behind.

    Task-agnostic: batching, losses, the per-domain metric, the selection score and the report are the run's
    :class:`~vltk.tasks.base.Task`'s; the loop, schedule, checkpoints and resume are the same for every task.
    Construction checks everything it can before it writes (output folder, lock, every data split, the resume
    checkpoint's fit with the model), so a failing construction leaves an existing run folder as it was; then it
    takes the folder's lock (released when :meth:`fit` ends, or by :meth:`close`).
    """

    def __init__(
        self,
        run: ResolvedRun,
        output: Path,
        *,
        resume: bool = False,
        quiet: bool = False,
        changes: dict[str, Any] | None = None,
    ) -> None:
        from rich.console import Console

        from vltk.pipeline import build_data_source, build_model
        from vltk.tasks import get_task

        config = run.config
        self.run = run
        self.config = config
        self.task = get_task(run.task)
        self.collate_fn = self.task.collate
        self.output = Path(output)
        self.quiet = quiet
        self.console = Console(stderr=True)
        self.stdout = Console()
        check_output_folder(self.output)
        self.lock = RunLock(self.output)
        self.lock.check()
        resumed = load_resume_checkpoint(self.output) if resume else None
        seed_everything(config.seed)
        self.device = pick_device(config.device)
        self.precision = MixedPrecision(config.train.precision, self.device)
        self.source = build_data_source(run)
        self.train_splits = check_data_source(self.source, config.train.batch_size)
        self.model = build_model(run, class_names=list(self.source.classes), ignore_index=self.source.ignore_index).to(
            self.device
        )
        self.optimizer = build_optimizer(self.model, config)
        self.ema = ema_for_run(self.model, config.train.ema)
        self.step = 0
        self.history: dict[str, Any] = {"train": [], "eval": []}
        self.best: float | None = None
        #: the iteration and file of the newest checkpoint on disk that a resume would continue from
        self.last_saved_step: int | None = None
        self.last_saved_path: Path | None = None
        self._rng: dict[str, Any] | None = None
        self._data_position: dict[str, int] | None = None
        self._batches: EpochBatches | None = None
        self._signals: StopSignals | None = None
        if resume:
            self._resume(resumed)
        self._prepare_folder(changes or {})

    def _prepare_folder(self, changes: dict[str, Any]) -> None:
        """Everything checked: lock the folder, clear leftovers, write the configuration and the environment."""
        make_output_folder(self.output)
        self.lock.acquire()
        try:
            removed = remove_unfinished_saves(self.output)
            if removed and not self.quiet:
                megabytes = sum(size for _, size in removed) / 1e6
                self.console.print(
                    f"removed {len(removed)} unfinished checkpoint file(s) of an interrupted save ({megabytes:.1f} MB)"
                )
            newest = self.output / "last.pt"
            if self.last_saved_path is not None and self.last_saved_path != newest and newest.is_file():
                newest.replace(self.output / "last.broken.pt")  # kept for inspection, out of the rotation
            (self.output / "config.resolved.yaml").write_text(to_yaml(self.config))
            (self.output / "environment.json").write_text(to_json(environment()))
            if self.last_saved_step is None:  # a run from scratch: earlier runs' changes do not describe it
                (self.output / CHANGES_NAME).unlink(missing_ok=True)
            if changes:
                record_changes(self.output, changes, self.step)
        except BaseException:
            self.lock.release()
            raise

    def close(self) -> None:
        """Release the run folder (``fit`` does this itself); for callers that build a trainer and do not fit."""
        self.lock.release()

    # ------------------------------------------------------------------------------------------ checkpoints

    def _keeps_backbone(self) -> bool:
        """Drop the frozen backbone from checkpoints only when its weights come from a file we can reload."""
        pretrained = self.config.backbone.options().get("pretrained")
        return not (self.model.adapter.freezes_backbone and pretrained)

    def _state(self) -> dict[str, Any]:
        model_state = model_state_for_checkpoint(self.model, include_backbone=self._keeps_backbone())
        ema_state = None
        if self.ema is not None:  # mmengine's swap: "model" holds the EMA weights that eval/predict should use
            model_state, ema_state = self.ema.checkpoint_model_state(model_state)
        return {
            "model": model_state,
            "ema": ema_state,
            "precision": self.precision.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "config": self.config.to_dict(),
            "history": self.history,
            "best": self.best,
            "class_names": list(self.source.classes),
            "palette": [list(color) for color in self.source.palette],
            "backbone_included": self._keeps_backbone(),
            "rng": rng_state(),
            "data": self._batches.position() if self._batches is not None else None,
        }

    def _resume(self, resumed: tuple[dict[str, Any], Path] | None) -> None:
        if resumed is None:
            self.console.print(f"[yellow]no {self.output / 'last.pt'} to resume from: starting a new run[/yellow]")
            return
        state, path = resumed
        load_model_state(
            self.model,
            state,
            source=f"checkpoint '{path}'",
            fix="resume with the configuration it was trained with (drop the changes to the model)",
        )
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (KeyError, ValueError) as error:
            raise UserError(
                f"checkpoint '{path}' holds an optimizer state that does not fit this run's trainable parameters "
                f"({error}); resume without the changes to what trains"
            ) from None
        resume_ema(self.ema, self.model, state.get("ema"))
        self.precision.load_state_dict(state.get("precision"))
        self.step = int(state["step"])
        self.history = state["history"]
        self.best = state["best"]
        self._rng = state.get("rng")
        self._data_position = state.get("data")
        self.last_saved_step, self.last_saved_path = self.step, path
        self.console.print(f"resumed from {path} at iteration {self.step}")

    def _saved_note(self) -> str:
        """What a resume would continue from, for messages: only claims a checkpoint that exists."""
        if self.last_saved_step is None or self.last_saved_path is None:
            return "no checkpoint of this run was saved yet"
        return f"{self.last_saved_path} holds iteration {self.last_saved_step}, the last good checkpoint"

    def _save(self, name: str) -> None:
        """Write ``name`` atomically; signals wait for it. ``last.pt`` keeps its previous generation once this run
        has saved one (the first save of a new run replaces, and drops, what an earlier run left).

        A full disk or an unwritable folder is one :class:`UserError` that says what is still on disk.
        """
        path = self.output / name
        rotate = name == "last.pt" and self.last_saved_step is not None
        saving = self._signals.saving() if self._signals is not None else contextlib.nullcontext()
        with saving:
            try:
                save_atomic(self._state(), path, keep_previous=rotate)
                if name == "last.pt" and not rotate:  # an older run's generation must never be resumed from
                    previous_path(path).unlink(missing_ok=True)
            except OSError as error:
                what = "no space left on device" if error.errno == errno.ENOSPC else (error.strerror or str(error))
                raise UserError(
                    f"cannot save '{path}': {what} ({self._saved_note()}); free space or fix the folder, then "
                    f"continue with `{resume_command(self.output)}`"
                ) from None
            if name == "last.pt":
                self.last_saved_step, self.last_saved_path = self.step, path

    # ------------------------------------------------------------------------------------------------ train

    def _train_dataset(self) -> Dataset:
        parts = [self.train_splits[domain] for domain in self.source.train_domains]
        return parts[0] if len(parts) == 1 else ConcatDataset(parts)

    def _batches_from_checkpoint(self, dataset: Dataset) -> EpochBatches:
        """The training batches from where the resumed checkpoint left the data order (or from the start)."""
        train = self.config.train
        position = self._data_position
        make = functools.partial(EpochBatches, dataset, train.batch_size, self.config.seed, train.num_workers)
        if position is None:  # a new run, or a checkpoint older than the saved position: the order is the step's
            steps = max(1, len(dataset) // train.batch_size)
            done = micro_batches_done(self.step, train.accumulate_steps)
            return make(self.collate_fn, epoch=done // steps, batch=done % steps)
        if (position["size"], position["batch_size"]) == (len(dataset), train.batch_size):
            return make(self.collate_fn, epoch=position["epoch"], batch=position["batch"])
        self.console.print("the training set or batch size changed on resume: continuing with a fresh epoch")
        return make(self.collate_fn, epoch=position["epoch"] + 1)

    def _notify(self, message: str) -> None:
        self.console.print(message, markup=False, highlight=False)

    def fit(self) -> dict[str, Any]:
        """Train to ``train.iters`` (from the resumed step), evaluating and checkpointing on the way.

        SIGINT/SIGTERM end it at the next step boundary with ``last.pt`` saved and :class:`Interrupted` raised
        (its ``saved`` says whether ``last.pt`` holds the step it stopped at).
        """
        try:
            with StopSignals(self._notify) as signals:
                self._signals = signals
                try:
                    return self._fit(signals)
                except Interrupted as interrupt:
                    raise Interrupted(interrupt.signum, saved=self.last_saved_step == self.step) from None
        finally:
            self._signals = None
            self.lock.release()

    def _fit(self, signals: StopSignals) -> dict[str, Any]:
        config = self.config
        train = config.train
        dataset = self._train_dataset()
        self._fit_augmenters(dataset)
        batches = self._batches = self._batches_from_checkpoint(dataset)
        if self._rng is not None:  # right before the first step, as the uninterrupted run was at this point
            restore_rng_state(self._rng)
            self._rng = None
        trainable = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.model.train()
        progress = _Progress(
            self.console, total=train.iters, start=self.step, enabled=not self.quiet, log_interval=train.log_interval
        )
        with progress:
            while self.step < train.iters:
                if signals.requested is not None:  # a step boundary: the state is whole, save it and stop
                    if self.last_saved_step != self.step:
                        self._save("last.pt")
                    raise Interrupted(signals.requested, saved=True)
                record = self._train_step(batches, trainable)
                self.history["train"].append(record)
                progress.advance(self.step, record["loss"])
                if train.eval_interval and self.step % train.eval_interval == 0 and self.step < train.iters:
                    self._evaluate_and_record(progress)
                    self.model.train()
                if self.step % train.checkpoint_interval == 0 and self.step < train.iters:
                    self._save("last.pt")
        if self.last_saved_step != self.step:  # the trained state is on disk before the final evaluation
            self._save("last.pt")
        if signals.requested is not None:
            raise Interrupted(signals.requested, saved=True)
        signals.immediate = True  # nothing left to lose: a signal now stops the final evaluation at once
        results = self._evaluate_and_record(None, overlays=True)
        self._save("last.pt")
        self._write_reports(results)
        return results

    def _fit_augmenters(self, dataset: Dataset) -> None:
        """The ``fit`` phase of augmenters that have one (CLIP the Gap's offsets), before the first step.

        Fitted state is in the checkpoint, so a resumed run skips it. Batches come from the training set with
        their own seed, so the training batch order is the same with or without the phase.
        """
        pending = [
            augmenter
            for augmenter in getattr(self.model, "augmenters", ())
            if callable(getattr(augmenter, "fit", None)) and not getattr(augmenter, "is_fitted", False)
        ]
        if not pending:
            return
        train = self.config.train
        batches = EpochBatches(dataset, train.batch_size, self.config.seed + 1, train.num_workers, self.collate_fn)
        images = (self.task.batch_images(batch) for batch in batches)
        log = None if self.quiet else self.console.print
        for augmenter in pending:
            name = type(augmenter).__name__
            if log is not None:
                log(f"fit phase of {name} (before training)...")
            started = time.perf_counter()
            summary = augmenter.fit(self.model, images, device=self.device, log=log)
            summary = {"augmenter": name, "seconds": time.perf_counter() - started, **dict(summary or {})}
            self.history.setdefault("augmenter_fit", []).append(summary)
            if log is not None:
                log(f"fit phase of {name} done in {summary['seconds']:.1f}s")

    def _batch_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The model's loss terms for one collated batch (``"loss"`` is the total), as the task computes them."""
        return self.task.batch_losses(self.model, batch, self.device)

    def _check_loss(self, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss):
            raise UserError(
                f"loss became {loss.item()} at iteration {self.step + 1}: training diverged; lower train.lr or "
                f"set train.grad_clip ({self._saved_note()})"
            )

    def _train_step(self, batches: EpochBatches, trainable: list[nn.Parameter]) -> dict[str, float]:
        """One optimizer step (over ``accumulate_steps`` micro-batches, :mod:`vltk.engine.precision`) at the
        current schedule position, then the EMA update; returns the logged loss terms (micro-batch means)."""
        train = self.config.train
        for group in self.optimizer.param_groups:
            group["lr"] = train.lr * group["lr_mult"] * lr_factor(self.step, self.config)
        self.optimizer.zero_grad(set_to_none=True)
        losses = accumulate_gradients(
            batches, train.accumulate_steps, self._batch_losses, self.precision, self._check_loss
        )
        self.precision.step(self.optimizer, trainable, train.grad_clip)
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        scale = self.precision.grad_scale()
        return {
            "iter": self.step,
            "lr": self.optimizer.param_groups[0]["lr"],
            **({} if scale is None else {"grad_scale": scale}),
            **losses,
        }

    def _run_evaluation(self, overlays: bool) -> dict[str, Any]:
        """Per-domain results of the current model (the task decides what is measured)."""
        from vltk.engine.evaluation import evaluate

        overlay_dir = self.output / "overlays" if overlays else None
        with evaluating_with(self.ema, self.model):  # the EMA weights when train.ema is on (as mmdet's EMAHook)
            return evaluate(self.model, self.source, self.task, self.config.eval, self.device, overlay_dir=overlay_dir)

    def _evaluate_and_record(self, progress: _Progress | None, overlays: bool = False) -> dict[str, Any]:
        if progress is not None:
            progress.note("evaluating...")
        results = self._run_evaluation(overlays)
        results["iter"] = self.step
        if not self.history["eval"] or self.history["eval"][-1]["iter"] != self.step:
            self.history["eval"].append(results)
        score = self.task.selection_score(results)
        if self.best is None or score > self.best:
            self.best = score
            self._save("best.pt")
        if progress is not None:
            progress.note(self.task.progress_message(self.step, results))
        return results

    def _write_reports(self, results: dict[str, Any]) -> None:
        metrics = {
            "final": results,
            self.task.best_key: self.best,
            "history": self.history,
            "train_domains": list(self.source.train_domains),
            "recipe": self.config.recipe,
        }
        (self.output / "metrics.json").write_text(to_json(metrics))
        self.task.plot_history(self.history, self.output / "curves.png", self.source.train_domains)
        self.stdout.print(self.task.result_table(results, self.source.train_domains))


class _Progress:
    """rich progress bar on stderr when it is a terminal; plain periodic log lines otherwise (CI, pipes)."""

    def __init__(self, console: Any, total: int, start: int, enabled: bool, log_interval: int) -> None:
        self.console = console
        self.total = total
        self.start_step = start
        self.enabled = enabled
        self.interactive = enabled and console.is_terminal
        self.log_interval = log_interval
        self.started = time.perf_counter()
        self.bar: Any = None
        self.task: Any = None

    def __enter__(self) -> _Progress:
        if self.interactive:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("{task.fields[speed]} it/s"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self.bar.__enter__()
            self.task = self.bar.add_task("train", total=self.total, completed=self.start_step, loss="-", speed="-")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def advance(self, step: int, loss: float) -> None:
        elapsed = time.perf_counter() - self.started
        speed = (step - self.start_step) / elapsed if elapsed > 0 else 0.0
        if self.bar is not None:
            self.bar.update(self.task, completed=step, loss=f"{loss:.3f}", speed=f"{speed:.2f}")
        elif self.enabled and (step % self.log_interval == 0 or step == self.total):
            eta = (self.total - step) / speed if speed > 0 else float("inf")
            print(
                f"iter {step}/{self.total}  loss {loss:.4f}  {speed:.2f} it/s  ETA {eta:.0f}s",
                file=sys.stderr,
                flush=True,
            )

    def note(self, message: str) -> None:
        if self.enabled:
            self.console.print(message)
