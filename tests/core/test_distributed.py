"""Data-parallel training through torchrun (gloo on the CPU) equals the single-process run.

The subprocess tests start real ranks with ``python -m torch.distributed.run --nproc_per_node 2`` on the tiny
recipe (:mod:`tests.core.ddp_worker` is one rank) and compare with the same run in one process: the loss of every
step, the weights of both ranks, the evaluation results, and which rank wrote into the run folder. The decoder
uses GroupNorm and no dropout, so that nothing depends on how the global batch is split (BatchNorm statistics
would be per rank; dropout draws from each rank's own RNG). The unit tests pin the pieces: the batch split, the
evaluation shards, the merge of detection statistics, the refusals.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from vltk.engine.batches import EpochBatches
from vltk.engine.detection_metrics import VOCAveragePrecision
from vltk.engine.distributed import (
    SINGLE,
    DistributedContext,
    agree,
    convert_sync_batchnorm,
    local_batch_size,
    mean_over_ranks,
    rank_rng_state,
    requested_stop,
    shard,
    shard_bounds,
)
from vltk.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("ddp_worker.py")
TINY = [
    "dataset.size=32",
    "dataset.num_train=8",
    "dataset.num_val=3",  # 3 images over 2 ranks: shards of unequal size
    "dataset.domains=[synthetic,fog]",
    "backbone.variant=tiny",
    "decoder.channels=16",
    "decoder.head_channels=64",  # GroupNorm(32) with 2 channels a group: stable on 1x1 maps
    "decoder.norm=gn",
    "decoder.dropout=0",
    "train.iters=4",
    "train.batch_size=4",
    "train.eval_interval=2",
    "train.checkpoint_interval=2",
    "eval.batch_size=2",
    "eval.overlays=1",
    "device=cpu",
]


def _env() -> dict[str, str]:
    paths = [str(ROOT), str(ROOT / "kernels"), str(ROOT / "plugins"), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), "OMP_NUM_THREADS": "1"}


def _torchrun(nproc: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]


def _train(results: Path, folder: Path, *options: str, ranks: int = 2, extra: tuple[str, ...] = ()) -> list[dict]:
    """Run the worker (under torchrun when ``ranks`` > 1); each rank's saved results, in rank order."""
    launcher = _torchrun(ranks) if ranks > 1 else [sys.executable]
    command = [*launcher, str(WORKER), str(results), str(folder), *options, "--", *TINY, *extra]
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [torch.load(results / f"rank{rank}.pt", weights_only=False) for rank in range(ranks)]


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("single")
    return _train(base / "results", base / "run", ranks=1)[0]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Any]], Path]:
    base = tmp_path_factory.mktemp("ddp")
    return _train(base / "results", base / "run"), base / "run"


# ------------------------------------------------------------------------------------------ real torchrun runs


@pytest.mark.slow
def test_two_ranks_train_as_one_process(single: dict[str, Any], two_ranks: tuple[list[dict], Path]) -> None:
    ranks, _ = two_ranks
    assert [rank["world_size"] for rank in ranks] == [2, 2]
    for rank in ranks:  # every logged loss is the mean over ranks: the single-process loss of the global batch
        assert rank["losses"] == pytest.approx(single["losses"], abs=1e-5)
        assert len(rank["losses"]) == 4
    zero, one = ranks[0]["state"], ranks[1]["state"]
    for key, value in zero.items():
        assert torch.equal(value, one[key]), key  # DDP keeps the ranks identical
        assert torch.allclose(value.float(), single["state"][key].float(), atol=1e-5), key


@pytest.mark.slow
def test_evaluation_shards_reduce_to_the_single_process_metrics(
    single: dict[str, Any], two_ranks: tuple[list[dict], Path]
) -> None:
    ranks, _ = two_ranks
    expected = single["results"]["domains"]
    for rank in ranks:
        domains = rank["results"]["domains"]
        assert set(domains) == set(expected) == {"synthetic", "fog"}
        for name, entry in expected.items():
            assert domains[name]["images"] == entry["images"] == 3
            for key in ("miou", "accuracy"):
                assert domains[name][key] == pytest.approx(entry[key], abs=1e-9), (name, key)
            for cls, iou in entry["iou"].items():
                got = domains[name]["iou"][cls]
                assert (math.isnan(got) and math.isnan(iou)) or got == pytest.approx(iou, abs=1e-9)


@pytest.mark.slow
def test_only_rank_zero_writes_the_run_folder(two_ranks: tuple[list[dict], Path]) -> None:
    ranks, folder = two_ranks
    assert ranks[1]["writes"] == []  # not one open-for-writing, rename, mkdir or remove under the folder
    written = " ".join(ranks[0]["writes"])
    for name in ("config.resolved.yaml", "environment.json", "last.pt", "best.pt", "metrics.json", "curves.png"):
        assert name in written
        assert (folder / name).is_file()
    assert sorted(p.name for p in (folder / "overlays").iterdir()) == ["fog_0.png", "synthetic_0.png"]
    assert not (folder / "run.lock").exists()
    checkpoint = torch.load(folder / "last.pt", weights_only=True)
    assert checkpoint["step"] == 4 and len(checkpoint["rng_ranks"]) == 2


@pytest.mark.slow
def test_a_signal_to_one_rank_stops_every_rank_and_resumes_exactly(
    tmp_path: Path, two_ranks: tuple[list[dict], Path]
) -> None:
    """SIGTERM reaches rank 1 alone during step 2: both ranks stop at the same step boundary, rank 0 saves, and
    the resumed 2-rank run ends with the uninterrupted run's losses and weights."""
    reference, _ = two_ranks
    folder = tmp_path / "run"
    stopped = _train(tmp_path / "stopped", folder, "--stop", f"2:1:{int(signal.SIGTERM)}")
    assert [rank["interrupted"] for rank in stopped] == [signal.SIGTERM, signal.SIGTERM]
    assert stopped[0]["step"] == stopped[1]["step"] == 2
    assert torch.load(folder / "last.pt", weights_only=True)["step"] == 2
    assert stopped[1]["writes"] == []
    resumed = _train(tmp_path / "resumed", folder, "--resume")
    for rank in resumed:
        assert rank["losses"] == reference[0]["losses"]
        for key, value in reference[0]["state"].items():
            assert torch.equal(rank["state"][key], value), key


@pytest.mark.slow
def test_cli_nproc_trains_rein_on_a_frozen_backbone(tmp_path: Path) -> None:
    """``vltk train --nproc 2`` through the real CLI; Rein's query parameters take no part in an FPN loss, which
    DDP without ``find_unused_parameters`` stops with "expected to have finished reduction"."""
    out = tmp_path / "rein"
    command = [sys.executable, "-m", "vltk", "train", "--nproc", "2", "--adapter", "rein", "--output", str(out)]
    overrides = [item for item in TINY if not item.startswith(("decoder.norm", "decoder.head"))]
    done = subprocess.run(
        [*command, *overrides, "decoder.head_channels=16", "backbone.pretrained=null"],  # random: one warning
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "finished reduction" not in done.stderr and "Traceback" not in done.stderr
    assert done.stdout.count("run folder:") == 1 and done.stdout.count("mIoU per domain") == 1  # rank 0 prints
    assert done.stderr.count("random weights") == 1  # one warning, not one per rank
    for name in ("config.resolved.yaml", "last.pt", "best.pt", "metrics.json"):
        assert (out / name).is_file()
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 4


def test_cli_nproc_refuses_a_batch_that_does_not_split(tmp_path: Path) -> None:
    out = tmp_path / "run"
    command = [sys.executable, "-m", "vltk", "train", "--nproc", "2", "--output", str(out), *TINY]
    done = subprocess.run([*command, "train.batch_size=3"], env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and "train.batch_size=3 cannot be split evenly over 2 processes" in lines[0]
    assert "Traceback" not in done.stderr and not out.exists()


@pytest.mark.slow
def test_a_failure_on_rank_zero_is_one_error_line_for_all_ranks(tmp_path: Path) -> None:
    """Rank 0 alone checks the output folder; rank 1 learns of the failure at the next collective, stops
    silently, and the launcher adds nothing: one ``Error:`` line, exit code 2."""
    (tmp_path / "file").write_text("in the way")
    out = tmp_path / "file" / "run"
    command = [sys.executable, "-m", "vltk", "train", "--nproc", "2", "--output", str(out), *TINY]
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert lines == [
        f"Error: output folder '{out}' cannot be created: '{out.parent}' is a file, not a folder; "
        "choose another --output"
    ]


# ------------------------------------------------------------------------------------------ the pieces


class _Items(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 12

    def __getitem__(self, index: int) -> int:
        return index


def _collate(items: list[int]) -> list[int]:
    return list(items)


def test_ranks_take_contiguous_slices_of_the_same_global_batches() -> None:
    whole = EpochBatches(_Items(), 4, seed=3, num_workers=0, collate_fn=_collate, epoch=1, batch=1)
    parts = [
        EpochBatches(_Items(), 4, seed=3, num_workers=0, collate_fn=_collate, epoch=1, batch=1, rank=r, world_size=2)
        for r in range(2)
    ]
    for _ in range(7):  # across an epoch boundary
        batch = next(whole)
        assert next(parts[0]) + next(parts[1]) == batch
        assert parts[0].position() == parts[1].position() == whole.position()


def test_batch_size_must_split_evenly() -> None:
    assert local_batch_size(DistributedContext(world_size=4), 16) == 4
    assert local_batch_size(SINGLE, 3) == 3
    with pytest.raises(UserError, match="train.batch_size=6 cannot be split evenly over 4 processes"):
        local_batch_size(DistributedContext(world_size=4), 6)


@pytest.mark.parametrize("world_size", [1, 2, 3, 5])
def test_evaluation_shards_cover_each_image_once_in_order(world_size: int) -> None:
    for length in range(9):
        bounds = [shard_bounds(length, rank, world_size) for rank in range(world_size)]
        covered = [index for start, end in bounds for index in range(start, end)]
        assert covered == list(range(length))
        assert max(end - start for start, end in bounds) - min(end - start for start, end in bounds) <= 1
    part = shard(DistributedContext(rank=1, world_size=2), _Items())
    assert [part[i] for i in range(len(part))] == list(range(6, 12))
    assert shard(SINGLE, dataset := _Items()) is dataset


def test_merged_detection_statistics_equal_the_whole_domain() -> None:
    """AP of shards gathered in rank order equals AP of all images at once, ties in score included."""
    generator = torch.Generator().manual_seed(0)
    images = []
    for _ in range(7):
        boxes = torch.rand(3, 2, generator=generator) * 50
        gt = torch.cat([boxes, boxes + 20], 1)
        predicted = gt + torch.randn(3, 4, generator=generator) * 4
        scores = torch.tensor([0.9, 0.5, 0.5])  # equal scores: order decides
        labels = torch.randint(0, 2, (3,), generator=generator)
        images.append(({"boxes": predicted, "scores": scores, "labels": labels}, {"boxes": gt, "labels": labels}))
    whole = VOCAveragePrecision(2)
    whole.update([p for p, _ in images], [t for _, t in images])
    parts = []
    for rank in range(3):
        start, end = shard_bounds(len(images), rank, 3)
        part = VOCAveragePrecision(2)
        part.update([p for p, _ in images[start:end]], [t for _, t in images[start:end]])
        parts.append(part)
    assert VOCAveragePrecision.merged(parts).compute() == whole.compute()
    with pytest.raises(ValueError, match="different classes"):
        VOCAveragePrecision.merged([VOCAveragePrecision(2), VOCAveragePrecision(3)])


class _WithDecoder(nn.Module):
    def __init__(self, sync_bn: bool) -> None:
        super().__init__()
        self.decoder = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
        self.decoder.sync_bn = sync_bn


def test_sync_batchnorm_is_refused_on_cpu_ranks_and_a_no_op_alone() -> None:
    cpu = torch.device("cpu")
    two = DistributedContext(rank=0, world_size=2, backend="gloo")
    with pytest.raises(UserError, match="SyncBatchNorm.*CUDA GPUs only.*decoder.norm=bn"):
        convert_sync_batchnorm(_WithDecoder(sync_bn=True), two, cpu)
    model = convert_sync_batchnorm(_WithDecoder(sync_bn=True), SINGLE, cpu)
    assert isinstance(model.decoder[1], nn.BatchNorm2d) and not isinstance(model.decoder[1], nn.SyncBatchNorm)
    plain = convert_sync_batchnorm(_WithDecoder(sync_bn=False), two, cpu)  # nothing asked: nothing to refuse
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in plain.modules())


def test_single_process_helpers_are_identities() -> None:
    assert mean_over_ranks(SINGLE, {"loss": torch.tensor(2.5), "loss_ce": torch.tensor(1.0)}) == {
        "loss": 2.5,
        "loss_ce": 1.0,
    }
    assert requested_stop(SINGLE, None) is None and requested_stop(SINGLE, 15) == 15
    agree(SINGLE, None)
    with pytest.raises(UserError, match="boom"):
        agree(SINGLE, UserError("boom"))


def test_each_rank_resumes_its_own_rng_stream() -> None:
    saved = {"rng": "rank 0 alone", "rng_ranks": ["zero", "one"]}
    assert rank_rng_state(DistributedContext(rank=1, world_size=2), saved) == "one"
    assert rank_rng_state(DistributedContext(rank=0, world_size=3), saved) == "rank 0 alone"  # other world size
    assert rank_rng_state(DistributedContext(rank=2, world_size=3), saved) is None
    assert rank_rng_state(SINGLE, {"rng": "only", "rng_ranks": None}) == "only"


def test_ranks_leave_a_second_signal_to_the_launcher() -> None:
    """torchrun forwards the signal a worker may already have had (SLURM signals every process): a rank's second
    signal must not turn the orderly stop into one without a checkpoint."""
    from vltk.engine.interrupts import StopSignals

    notes: list[str] = []
    with StopSignals(notes.append, second_stops=False) as signals:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # would raise Interrupted in a single process
        assert signals.requested == signal.SIGTERM
    assert len(notes) == 1 and "further signals are the launcher's" in notes[0]


def test_nproc_workers_get_the_same_run_and_the_resolved_folder() -> None:
    from vltk.cli.run import RESUME_HERE, worker_arguments

    options = {"recipe": "rein/synthetic", "adapter": None, "augmenter": ["a", "b"], "quiet": True, "dry": False}
    args = worker_arguments(overrides=["train.iters=5"], options=options, output=Path("runs/x"), resume=RESUME_HERE)
    assert args == [
        "train",
        "train.iters=5",
        "--recipe=rein/synthetic",
        "--augmenter=a",
        "--augmenter=b",
        "--quiet",
        "--output=runs/x",
        "--resume",  # last: a bare --resume must not take an override as its folder
    ]
    assert worker_arguments(overrides=[], options={}, output=Path("o"), resume="runs/y") == ["train", "--resume=runs/y"]
