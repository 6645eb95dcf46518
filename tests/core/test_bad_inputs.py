"""Every bad input of issue 12 through the real CLI (a subprocess), pointed at a copy of a finished run folder:
exit code 2, exactly one ``Error:`` line, no traceback, never torch's ``weights_only=False`` advice, and every
file of the run folder unchanged byte for byte (nothing added, nothing removed)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_runs import tiny_cli

pytestmark = pytest.mark.slow

TINY = tiny_cli("train.iters=2", "train.checkpoint_interval=1", "eval.overlays=1")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    done = subprocess.run(
        [sys.executable, "-m", "vltk", "train", "--output", str(out), *TINY],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "last.prev.pt").is_file() and (out / "best.pt").is_file()
    return out


class Foreign:
    """A Python object in a checkpoint: ``weights_only=True`` refuses it."""


def _png_claiming(path: Path, width: int, height: int) -> None:
    """A small valid PNG whose IHDR then claims ``width`` x ``height`` (with a correct CRC)."""
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = data[12:29]  # b"IHDR" + 13 bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, finished: Path) -> Path:
    folder = tmp_path_factory.mktemp("inputs")
    (folder / "latin1.yaml").write_bytes("train:\n  iters: 3  # caf\xe9\n".encode("latin-1"))
    torch.save({"model": Foreign(), "config": {}}, folder / "pickled.pt")
    config = torch.load(finished / "last.pt", weights_only=True)["config"]
    torch.save({"model": [torch.zeros(2)], "config": config}, folder / "listed.pt")
    detection = torch.load(finished / "last.pt", weights_only=True)
    detection["config"]["task"] = "detection"  # what `vltk predict` reads first: a detection model's record
    torch.save(detection, folder / "detection.pt")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / "image.png")
    _png_claiming(folder / "bomb.png", 40_000, 40_000)
    for sub in ("images", "labels"):
        (folder / "gta" / sub).mkdir(parents=True)
    for index in range(2):
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / "gta" / "images" / f"{index}.png")
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(folder / "gta" / "labels" / f"{index}.png")
    for name in ("ids", "bomb"):  # folder-kind domains: train-id labels
        for sub in ("images", "labels"):
            (folder / name / sub).mkdir(parents=True)
        for index in range(2):
            Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / name / "images" / f"{index}.png")
            Image.fromarray(np.full((32, 32), 26 if name == "ids" else 0, np.uint8)).save(
                folder / name / "labels" / f"{index}.png"
            )
    _png_claiming(folder / "bomb" / "images" / "0.png", 40_000, 40_000)
    return folder


def _plugin_gone(run: Path) -> None:
    """The run was trained with a decoder of plugin 'probe' (vltk-probe 0.3.0), since uninstalled."""
    config = (run / "config.resolved.yaml").read_text()
    (run / "config.resolved.yaml").write_text(config.replace("name: fpn", "name: probe-head"))
    state = torch.load(run / "last.pt", weights_only=True)
    state["config"]["decoder"] = {"name": "probe-head"}
    torch.save(state, run / "last.pt")
    environment = json.loads((run / "environment.json").read_text())
    environment["plugins"]["probe"] = {"distribution": "vltk-probe", "version": "0.3.0"}
    (run / "environment.json").write_text(json.dumps(environment))


def _tensorboard_installed() -> bool:
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def _hold_lock(run: Path) -> None:
    """This (live) test process holds the folder, as a second live run would."""
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": "now"}
    (run / "run.lock").write_text(json.dumps(record))


def _damage_both_generations(run: Path) -> None:
    for name in ("last.pt", "last.prev.pt"):
        path = run / name
        path.write_bytes(path.read_bytes()[:1000])


URBAN = ["--dataset", "urban", "backbone.variant=tiny", "train.batch_size=2"]
CASES: list[tuple[str, list[str], str, Callable[[Path], None] | None]] = [
    ("recipe-not-utf8", ["train", "--recipe", "{inputs}/latin1.yaml", "--output", "{run}"], "is not UTF-8", None),
    ("empty-key-part", ["train", "--output", "{run}", "train..iters=3"], "has an empty part", None),
    ("top-level-typo", ["train", "--output", "{run}", "train.itres=3"], "did you mean 'train.iters'?", None),
    ("batch-over-train-set", ["train", "--output", "{run}", *TINY, "train.batch_size=100"], "(8 images", None),
    ("task-mismatch", ["train", "--output", "{run}", "--dataset", "synthetic-det"], "provides boxes", None),
    (
        "target-folder-typo",
        [
            "train",
            "--output",
            "{run}",
            *URBAN,
            "dataset.train=[{{name: gta, kind: gtav, root: '{inputs}/gta'}}]",
            "dataset.test=[{{name: bdd, kind: bdd100k, root: '{inputs}/bdd-typo'}}]",
        ],
        "bdd-typo/images/10k/val' for domain 'bdd'",
        None,
    ),
    ("train-output-behind-file", ["train", "--output", "{run}/metrics.json/x", *TINY], "is a file, not a", None),
    ("train-output-in-proc", ["train", "--output", "/proc/vltk-run", *TINY], "cannot be created", None),
    (
        "eval-output-is-file",
        ["eval", "--checkpoint", "{run}/last.pt", "--output", "{run}/metrics.json"],
        "a file",
        None,
    ),
    ("eval-output-in-proc", ["eval", "--checkpoint", "{run}/last.pt", "--output", "/proc/vltk"], "cannot be", None),
    (
        "predict-output-is-file",
        ["predict", "{inputs}/image.png", "--checkpoint", "{run}/last.pt", "--output", "{run}/metrics.json"],
        "is a file",
        None,
    ),
    (
        "predict-output-in-proc",
        ["predict", "{inputs}/image.png", "--checkpoint", "{run}/last.pt", "--output", "/proc/vltk-preds"],
        "cannot be created",
        None,
    ),
    (
        "resume-other-variant",
        ["train", "--resume", "{run}", "backbone.variant=small", "--allow-changes"],
        "are for variant 'tiny', not 'small'",
        None,
    ),
    (
        "resume-frozen-on-random-weights",
        ["train", "--resume", "{run}", "backbone.pretrained=null", "--allow-changes"],
        "but random initialisation (backbone.pretrained=null) gives other weights",
        None,
    ),
    ("eval-other-architecture", ["eval", "--checkpoint", "{run}/last.pt", "decoder.channels=32"], "in the model", None),
    ("model-not-a-dict", ["eval", "--checkpoint", "{inputs}/listed.pt"], "'model' entry is a list", None),
    ("python-objects", ["eval", "--checkpoint", "{inputs}/pickled.pt"], "holds Python objects", None),
    ("resume-changes-refused", ["train", "--resume", "{run}", "seed=7"], "would change seed 0 -> 7", None),
    ("resume-missing-folder", ["train", "--resume", "{run}-typo"], "does not exist", None),
    ("resume-while-live", ["train", "--resume", "{run}"], "in use by another vltk run", _hold_lock),
    ("resume-unreadable", ["train", "--resume", "{run}"], "no readable checkpoint", _damage_both_generations),
    (
        "urban-label-ids-out-of-range",
        ["train", "--output", "{run}", *URBAN, "dataset.train=[{{name: city, kind: folder, root: '{inputs}/ids'}}]"],
        "ids/labels/0.png' holds class id(s) 26, outside the Cityscapes train ids 0..18",
        None,
    ),
    (
        "urban-png-bomb",
        ["train", "--output", "{run}", *URBAN, "dataset.train=[{{name: city, kind: folder, root: '{inputs}/bomb'}}]"],
        "bomb/images/0.png' claims more pixels",
        None,
    ),
    ("bench-json-in-proc", ["bench", "--json", "/proc/vltk-bench.json"], "cannot be written (in '/proc')", None),
    ("bench-json-behind-file", ["bench", "--json", "{run}/metrics.json/x.json"], "is a file, not a folder", None),
    ("resume-plugin-gone", ["train", "--resume", "{run}"], "pip install 'vltk-probe==0.3.0'", _plugin_gone),
    ("eval-plugin-gone", ["eval", "--checkpoint", "{run}/last.pt"], "pip install 'vltk-probe==0.3.0'", _plugin_gone),
    (
        "predict-detection-checkpoint",
        ["predict", "{inputs}/image.png", "--checkpoint", "{inputs}/detection.pt", "--output", "{inputs}/preds"],
        "is a detection model",
        None,
    ),
    (
        "predict-png-bomb",
        ["predict", "{inputs}/bomb.png", "--checkpoint", "{run}/last.pt", "--output", "{inputs}/preds"],
        "claims more pixels",
        None,
    ),
]


if not _tensorboard_installed():
    CASES.append(
        (
            "tensorboard-not-installed",
            ["train", "--output", "{run}", *TINY, "--logger", "tensorboard"],
            'pip install "vltk-dg[tensorboard]"',
            None,
        )
    )


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.mark.parametrize(("args", "message", "prepare"), [case[1:] for case in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line_and_leaves_the_run_folder_unchanged(
    args: list[str],
    message: str,
    prepare: Callable[[Path], None] | None,
    finished: Path,
    inputs: Path,
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    try:
        if prepare is not None:
            prepare(run)
        before = _snapshot(run)
        command = [arg.format(run=run, inputs=inputs) for arg in args]
        done = subprocess.run(
            [sys.executable, "-m", "vltk", *command], capture_output=True, text=True, env=_env(), timeout=600
        )
        output = done.stdout + done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
        assert done.returncode == 2, output[-3000:]
        assert len(errors) == 1, output[-3000:]
        assert message in errors[0], errors[0]
        assert "Traceback" not in output and "weights_only" not in output
        assert _snapshot(run) == before
    finally:
        shutil.rmtree(run, ignore_errors=True)


def test_eval_fails_on_its_output_folder_before_it_evaluates(
    finished: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vltk.engine.evaluation
    from vltk.testing import invoke

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("evaluated before checking the output folder")

    monkeypatch.setattr(vltk.engine.evaluation, "evaluate", never)
    (tmp_path / "file").write_text("x")
    result = invoke(["eval", "--checkpoint", str(finished / "last.pt"), "--output", str(tmp_path / "file" / "out")])
    assert result.exit_code == 2 and "is a file, not a folder" in result.output, result.output
