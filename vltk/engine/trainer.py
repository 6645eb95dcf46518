"""Iteration-based training and per-domain evaluation (AdamW, warm-up + poly, atomic checkpoints, exact resume).

The loop is plain PyTorch so that a researcher can read it top to bottom. Nothing is written before everything
that can be checked has been (the output folder, every data split, the resume checkpoint's fit with the model:
:mod:`vltk.engine.preflight`); then the run folder gets ``config.resolved.yaml`` and ``environment.json``,
``last.pt`` (+ ``last.prev.pt``) every ``checkpoint_interval`` steps, before the final evaluation and at the end,
``best.pt`` when the task's selection score improves, ``metrics.json`` (history + final results), ``curves.png``
and ``overlays/<domain>_<i>.png``. Ctrl-C and SIGTERM stop at a step boundary (:mod:`vltk.engine.interrupts`), and
a checkpoint holds every RNG and the position in the data order, so a resumed run continues exactly.

Under torchrun (or ``vltk train --nproc N``) the same loop trains data-parallel (:mod:`vltk.engine.distributed`):
DDP averages the gradients, each rank takes its slice of the global batch, losses and evaluation are reduced
over ranks, rank 0 alone writes and prints while the others wait for it, and all ranks stop at the same step.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import ConcatDataset, Dataset

from vltk.config import to_yaml
from vltk.engine import distributed
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
from vltk.engine.fingerprint import RECORD_KEY, backbone_record, check_backbone_fingerprint
from vltk.engine.fit_phase import fit_augmenters, pending_fits
from vltk.engine.interrupts import Interrupted, StopSignals
from vltk.engine.optimization import build_optimizer, compile_model, lr_factor
from vltk.engine.precision import MixedPrecision, accumulate_gradients, micro_batches_done
from vltk.engine.preflight import check_data_source, check_output_folder, make_output_folder
from vltk.engine.progress import EvalProgress, TrainProgress, parameter_summary
from vltk.engine.report import to_json
from vltk.engine.run_folder import CHANGES_NAME, RunLock, record_changes, remove_unfinished_saves, resume_command
from vltk.engine.run_log import RunLoggers
from vltk.errors import UserError
from vltk.resolved import ResolvedRun


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


class Trainer:
    """Owns a run folder: builds data and model, trains, evaluates, writes everything a run leaves behind.

    Task-agnostic: batching, losses, the per-domain metric, the selection score and the report are the run's
    :class:`~vltk.tasks.base.Task`'s; the loop, schedule, checkpoints and resume are the same for every task.
    Construction checks everything it can before it writes (output folder, lock, every data split, the resume
    checkpoint's fit with the model), so a failing construction leaves an existing run folder as it was; then it
    takes the folder's lock (released when :meth:`fit` ends, or by :meth:`close`). Started by torchrun, it joins
    the process group (``self.dist``); a failure on any rank stops every rank, and only rank 0 touches the folder.
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

        from vltk.tasks import get_task

        self.run = run
        self.config = run.config
        self.task = get_task(run.task)
        self.collate_fn = self.task.collate
        self.output = Path(output)
        self.dist, self.device = distributed.setup(pick_device(run.config.device))
        self.quiet = quiet or not self.dist.is_main
        self.console = Console(stderr=True, quiet=not self.dist.is_main)
        self.stdout = Console(quiet=not self.dist.is_main)
        self.lock = RunLock(self.output)
        failure: UserError | None = None
        try:
            self._check_and_build(resume)
        except UserError as error:
            failure = error
        distributed.agree(self.dist, failure)  # every rank built the run, or every rank stops
        distributed.on_main(self.dist, functools.partial(self._prepare_folder, changes or {}))

    def _check_and_build(self, resume: bool) -> None:
        """Everything that can fail before the folder is touched: checks, data, model, optimizer, resume state."""
        from vltk.pipeline import build_data_source, build_model

        run, config = self.run, self.config
        distributed.local_batch_size(self.dist, config.train.batch_size)
        if self.dist.is_main:
            check_output_folder(self.output)
            self.lock.check()
        resumed = load_resume_checkpoint(self.output) if resume else None
        # built (not started) before anything heavy: a logger whose package is missing fails here, nothing written
        start_step = int(resumed[0]["step"]) if resumed else 0
        self.loggers = (  # rank 0 logs; the others log nothing (their numbers are rank 0's after the all-reduce)
            RunLoggers.build(run, self.output, start_step=start_step, resumed=resumed is not None)
            if self.dist.is_main
            else RunLoggers()
        )
        seed_everything(config.seed)
        self.precision = MixedPrecision(config.train.precision, self.device)
        self.source = build_data_source(run)
        self.train_splits = check_data_source(self.source, config.train.batch_size)
        self.model = build_model(run, class_names=list(self.source.classes), ignore_index=self.source.ignore_index).to(
            self.device
        )
        distributed.convert_sync_batchnorm(self.model, self.dist, self.device)
        distributed.seed_rank(self.dist, config.seed)  # the same weights everywhere, then each rank's own dropout draws
        if config.train.compile:
            compile_model(self.model, config.train.compile_backend)
        #: what the training step calls ``loss`` on: the model, or its DDP wrapper (set up by :meth:`fit`)
        self.train_model: Any = self.model
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

    def _state(self, rank_rngs: list[Any] | None = None) -> dict[str, Any]:
        """The checkpoint; ``rank_rngs`` (data-parallel runs) holds every rank's RNG state, in rank order."""
        keeps_backbone = self._keeps_backbone()
        section = {"name": self.config.backbone.name, **self.config.backbone.options()}
        record = {} if keeps_backbone else {RECORD_KEY: backbone_record(self.model, section)}
        model_state = model_state_for_checkpoint(self.model, include_backbone=keeps_backbone)
        ema_state = None
        if self.ema is not None:  # mmengine's swap: "model" holds the EMA weights that eval/predict should use
            model_state, ema_state = self.ema.checkpoint_model_state(model_state)
        return {
            **record,
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
            "backbone_included": keeps_backbone,
            "rng": rng_state(),
            "data": self._batches.position() if self._batches is not None else None,
            "rng_ranks": rank_rngs,
        }

    def _resume(self, resumed: tuple[dict[str, Any], Path] | None) -> None:
        if resumed is None:
            self.console.print(f"[yellow]no {self.output / 'last.pt'} to resume from: starting a new run[/yellow]")
            return
        state, path = resumed
        check_backbone_fingerprint(
            self.model, state, source=f"checkpoint '{path}'", weights=self.config.backbone.options().get("pretrained")
        )
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
        self._rng = distributed.rank_rng_state(self.dist, state)
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

        A full disk or an unwritable folder is one :class:`UserError` that says what is still on disk. Every rank
        calls it (the RNG states are gathered), rank 0 writes, the others wait for the file.
        """
        path = self.output / name
        rotate = name == "last.pt" and self.last_saved_step is not None
        rank_rngs = distributed.all_gather_objects(self.dist, rng_state()) if self.dist.is_distributed else None
        saving = self._signals.saving() if self._signals is not None else contextlib.nullcontext()
        with saving:
            distributed.on_main(self.dist, functools.partial(self._write_checkpoint, name, rotate, rank_rngs))
            if name == "last.pt":
                self.last_saved_step, self.last_saved_path = self.step, path

    def _write_checkpoint(self, name: str, rotate: bool, rank_rngs: list[Any] | None) -> None:
        """Rank 0's part of :meth:`_save`: the atomic write and the one-line error of a failed one."""
        path = self.output / name
        try:
            save_atomic(self._state(rank_rngs), path, keep_previous=rotate)
            if name == "last.pt" and not rotate:  # an older run's generation must never be resumed from
                previous_path(path).unlink(missing_ok=True)
        except OSError as error:
            what = "no space left on device" if error.errno == errno.ENOSPC else (error.strerror or str(error))
            raise UserError(
                f"cannot save '{path}': {what} ({self._saved_note()}); free space or fix the folder, then "
                f"continue with `{resume_command(self.output, self.dist.world_size)}`"
            ) from None

    # ------------------------------------------------------------------------------------------------ train

    def _train_dataset(self) -> Dataset:
        parts = [self.train_splits[domain] for domain in self.source.train_domains]
        return parts[0] if len(parts) == 1 else ConcatDataset(parts)

    def _batches_from_checkpoint(self, dataset: Dataset) -> EpochBatches:
        """The training batches from where the resumed checkpoint left the data order (or from the start)."""
        train = self.config.train
        position = self._data_position
        make = functools.partial(
            EpochBatches,
            dataset,
            train.batch_size,
            self.config.seed,
            train.num_workers,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
        )
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
            with StopSignals(self._notify, second_stops=not self.dist.is_distributed) as signals:
                self._signals = signals
                try:
                    self.loggers.start()
                    return self._fit(signals)
                except Interrupted as interrupt:
                    raise Interrupted(interrupt.signum, saved=self.last_saved_step == self.step) from None
        finally:
            self._signals = None
            try:
                self.loggers.close()
            finally:
                self.lock.release()

    def _fit(self, signals: StopSignals) -> dict[str, Any]:
        config = self.config
        train = config.train
        dataset = self._train_dataset()
        self._fit_augmenters(dataset, signals)
        batches = self._batches = self._batches_from_checkpoint(dataset)
        if self._rng is not None:  # right before the first step, as the uninterrupted run was at this point
            restore_rng_state(self._rng)
            self._rng = None
        trainable = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.train_model = distributed.wrap_for_training(self.model, self.dist, self.device)
        self.model.train()
        if not self.quiet:
            self._notify(parameter_summary(self.model))
        progress = TrainProgress(
            self.console, total=train.iters, start=self.step, enabled=not self.quiet, log_interval=train.log_interval
        )
        with progress:
            while self.step < train.iters:
                stop = distributed.requested_stop(self.dist, signals.requested)  # any rank's signal stops all
                if stop is not None:  # a step boundary: the state is whole, save it and stop
                    if self.last_saved_step != self.step:
                        self._save("last.pt")
                    raise Interrupted(stop, saved=True)
                record = self._train_step(batches, trainable)
                self.history["train"].append(record)
                self.loggers.train_step(record)
                progress.advance(self.step, record)
                if train.eval_interval and self.step % train.eval_interval == 0 and self.step < train.iters:
                    self._evaluate_and_record(progress)
                    self.model.train()
                if self.step % train.checkpoint_interval == 0 and self.step < train.iters:
                    self._save("last.pt")
        if self.last_saved_step != self.step:  # the trained state is on disk before the final evaluation
            self._save("last.pt")
        stop = distributed.requested_stop(self.dist, signals.requested)
        if stop is not None:
            raise Interrupted(stop, saved=True)
        signals.immediate = True  # nothing left to lose: a signal now stops the final evaluation at once
        results = self._evaluate_and_record(None, overlays=True)
        self._save("last.pt")
        distributed.on_main(self.dist, functools.partial(self._write_reports, results))
        self.loggers.final(results, self.step)
        return results

    def _fit_augmenters(self, dataset: Dataset, signals: StopSignals) -> None:
        """The fit phase of augmenters that have one (:mod:`vltk.engine.fit_phase`), before the first step.

        Batches come from the training set with their own seed, so the training batch order is the same with or
        without the phase. A stop asked for during the phase ends it and the run (nothing of it is saved).
        """
        if not pending_fits(self.model):
            return
        train = self.config.train
        batches = EpochBatches(dataset, train.batch_size, self.config.seed + 1, train.num_workers, self.collate_fn)
        summaries = fit_augmenters(
            self.model,
            (self.task.batch_images(batch) for batch in batches),
            device=self.device,
            run_iters=train.iters,
            should_stop=lambda: signals.requested is not None,
            log=None if self.quiet else self.console.print,
        )
        self.history.setdefault("augmenter_fit", []).extend(summaries)
        if signals.requested is not None:
            raise Interrupted(signals.requested, saved=self.last_saved_step == self.step)

    def _batch_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The model's loss terms for one collated batch (``"loss"`` is the total), as the task computes them."""
        return self.task.batch_losses(self.train_model, batch, self.device)

    def _check_loss(self, loss: torch.Tensor) -> None:
        """A micro-batch's loss must be finite (single process: before its gradients exist; with several ranks
        the check runs on the mean over ranks after the micro-batches, so that every rank stops together)."""
        if not self.dist.is_distributed and not torch.isfinite(loss):
            self._diverged(float(loss.detach()))

    def _diverged(self, value: float) -> None:
        raise UserError(
            f"loss became {value} at iteration {self.step + 1}: training diverged; lower train.lr or "
            f"set train.grad_clip ({self._saved_note()})"
        )

    def _train_step(self, batches: EpochBatches, trainable: list[nn.Parameter]) -> dict[str, float]:
        """One optimizer step (over ``accumulate_steps`` micro-batches, :mod:`vltk.engine.precision`) at the
        current schedule position, then the EMA update; returns the logged loss terms (micro-batch means)."""
        train = self.config.train
        for group in self.optimizer.param_groups:
            group["lr"] = train.lr * group["lr_mult"] * lr_factor(self.step, self.config)
        self.optimizer.zero_grad(set_to_none=True)
        no_sync = getattr(self.train_model, "no_sync", None)  # DDP: all-reduce once, after the last micro-batch
        losses = accumulate_gradients(
            batches, train.accumulate_steps, self._batch_losses, self.precision, self._check_loss, no_sync=no_sync
        )
        # what every rank logs and decides on: the mean over ranks of the micro-batch means
        logged = distributed.mean_over_ranks(self.dist, {name: torch.tensor(value) for name, value in losses.items()})
        if not math.isfinite(logged["loss"]):
            self._diverged(logged["loss"])
        self.precision.step(self.optimizer, trainable, train.grad_clip)
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        scale = self.precision.grad_scale()
        return {
            "iter": self.step,
            "lr": self.optimizer.param_groups[0]["lr"],
            **({} if scale is None else {"grad_scale": scale}),
            **logged,
        }

    def _run_evaluation(self, overlays: bool, progress: EvalProgress | None = None) -> dict[str, Any]:
        """Per-domain results of the current model (the task decides what is measured)."""
        from vltk.engine.evaluation import evaluate

        overlay_dir = self.output / "overlays" if overlays else None
        config, device = self.config.eval, self.device
        # a compiled model evaluates eagerly: eval mode, other batch and image sizes would each compile anew
        stance = torch.compiler.set_stance("force_eager") if self.config.train.compile else contextlib.nullcontext()
        with stance, evaluating_with(self.ema, self.model):  # the EMA weights when train.ema is on (mmdet's EMAHook)
            return evaluate(
                self.model,
                self.source,
                self.task,
                config,
                device,
                overlay_dir=overlay_dir,
                progress=progress,
                dist=self.dist,
            )

    def _evaluate_and_record(self, progress: TrainProgress | None, overlays: bool = False) -> dict[str, Any]:
        """Evaluate (the training clock paused, so the ETA stays a training ETA), log, keep ``best.pt``."""
        shown = progress.evaluation() if progress is not None else EvalProgress(self.console, enabled=not self.quiet)
        paused = progress.paused() if progress is not None else contextlib.nullcontext()
        try:
            with paused:
                results = self._run_evaluation(overlays, shown)
        finally:
            shown.close()
        results["iter"] = self.step
        self.loggers.evaluation(results, self.step)
        if not self.history["eval"] or self.history["eval"][-1]["iter"] != self.step:
            self.history["eval"].append(results)
        score = distributed.all_gather_objects(self.dist, self.task.selection_score(results))[0]  # rank 0's
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
        with evaluating_with(self.ema, self.model):  # the weights that were evaluated (the EMA's with train.ema)
            self.task.write_artifacts(self.model, self.output)
        self.task.plot_history(self.history, self.output / "curves.png", self.source.train_domains)
        self.stdout.print(self.task.result_table(results, self.source.train_domains))
