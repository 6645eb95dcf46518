"""One rank of the data-parallel tests (``python -m torch.distributed.run ... ddp_worker.py``), or the
single-process reference when started without torchrun.

``python ddp_worker.py RESULTS RUN_FOLDER [--stop STEP:RANK:SIGNAL] [--resume] -- OVERRIDES...`` trains the run
that the overrides describe with :class:`vltk.engine.trainer.Trainer` in ``RUN_FOLDER`` and saves what the test
compares to ``RESULTS/rank<R>.pt``: the logged losses, the final weights, the evaluation results, the step it
ended at, and every write this rank made inside the run folder (seen through Python's audit hooks, so a write by
any library counts). ``--stop`` sends SIGNAL to this process on rank RANK while it trains step STEP.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _record_writes(folder: Path, writes: list[str]) -> None:
    """Append ``event path`` to ``writes`` for every file-system change this process makes under ``folder``."""
    root = str(folder.resolve())

    def inside(path: Any) -> bool:
        try:
            return os.path.abspath(os.fsdecode(path)).startswith(root)
        except TypeError:  # a file descriptor
            return False

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event == "open" and args and inside(args[0]):
            mode, flags = args[1], args[2]
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & WRITE_FLAGS)
            if writing:
                writes.append(f"open {args[0]}")
        elif event in ("os.rename", "os.remove", "os.mkdir", "os.rmdir", "os.truncate") and inside(args[0]):
            writes.append(f"{event} {args[0]}")

    sys.addaudithook(hook)


def main(argv: list[str]) -> None:
    split = argv.index("--")
    options, overrides = argv[:split], argv[split + 1 :]
    results_dir, run_folder = Path(options[0]), Path(options[1])
    stop = options[options.index("--stop") + 1] if "--stop" in options else None
    resume = "--resume" in options

    import torch

    from vltk.config import build_config, resolve
    from vltk.engine.interrupts import Interrupted
    from vltk.engine.trainer import Trainer
    from vltk.plugins import get_plugin_manager

    writes: list[str] = []
    _record_writes(run_folder, writes)
    manager = get_plugin_manager()
    run = resolve(build_config(overrides=overrides, recipe_dirs=manager.recipe_dirs()), manager.get_registry())
    trainer = Trainer(run, run_folder, quiet=True, resume=resume)
    rank = trainer.dist.rank
    if stop is not None:
        step, stop_rank, signum = (int(part) for part in stop.split(":"))
        original = trainer._train_step

        def train_step(*args: Any) -> Any:
            if trainer.step == step - 1 and rank == stop_rank:
                os.kill(os.getpid(), signum)
            return original(*args)

        trainer._train_step = train_step  # type: ignore[method-assign]
    results, interrupted = None, None
    try:
        results = trainer.fit()
    except Interrupted as error:
        interrupted = error.signum
    results_dir.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "rank": rank,
            "world_size": trainer.dist.world_size,
            "losses": [entry["loss"] for entry in trainer.history["train"]],
            "state": {key: value.detach().cpu() for key, value in trainer.model.state_dict().items()},
            "results": results,
            "step": trainer.step,
            "interrupted": interrupted,
            "writes": writes,
        },
        results_dir / f"rank{rank}.pt",
    )
    from vltk.engine.distributed import shutdown

    shutdown()


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    main(sys.argv[1:])
