"""End to end on a tiny dataset: `masenet train` (loss goes down, outputs written), resume, time limit,
`masenet val` and `masenet predict` (in-process through service.cli.main)."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from model.checkpoint import read_metadata
from model.train.config import TrainConfig
from model.train.trainer import train
from service.cli import main
from tests.model.train.conftest import write_squares_dataset

EPOCHS = 4


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data.yaml, run folder) of a 4-epoch run at 64 px (served at 96), made through the command line."""
    root = tmp_path_factory.mktemp("train")
    data = write_squares_dataset(root / "data")
    out = root / "run"
    args = [
        "train",
        "--data",
        str(data),
        "--imgsz",
        "64",
        "--serve-imgsz",
        "96",
        "--epochs",
        str(EPOCHS),
        "--batch",
        "4",
    ]
    code = main([*args, "--workers", "0", "--out", str(out), "--seed", "1"])
    assert code == 0
    return data, out


def _rows(run: Path, name: str = "results.csv") -> list[dict[str, str]]:
    with open(run / name, newline="") as handle:
        return list(csv.DictReader(handle))


def _step_iterations(run: Path) -> list[int]:
    return [int(row["iteration"]) for row in _rows(run, "steps.csv")]


def _total(row: dict[str, str]) -> float:
    return sum(float(row[f"train/{name}"]) for name in ("box", "cls", "dfl"))


def test_training_lowers_the_loss_and_writes_everything(trained: tuple[Path, Path]) -> None:
    data, run = trained
    rows = _rows(run)
    assert [int(row["epoch"]) for row in rows] == list(range(1, EPOCHS + 1))
    assert _total(rows[-1]) < _total(rows[0])
    for column in ("lr/pg0", "val/map50", "val/map50_95", "val/precision", "val/recall", "val/pd", "seconds"):
        assert rows[-1][column] != ""
    for name in ("weights/best.pt", "weights/last.pt", "weights/best.safetensors", "losses.png", "pr_curve.png"):
        assert (run / name).stat().st_size > 0, name
    state = torch.load(run / "weights" / "last.pt", map_location="cpu", weights_only=True)
    assert state["epoch"] == EPOCHS and state["config"]["imgsz"] == 64
    steps = _rows(run, "steps.csv")  # 4 iterations per epoch: a row each
    assert _step_iterations(run) == list(range(1, state["iteration"] + 1))
    assert {int(row["epoch"]) for row in steps} == set(range(1, EPOCHS + 1))
    assert all(float(row["train/cls"]) > 0 and float(row["lr"]) > 0 for row in steps)
    assert {"model", "ema", "optimizer", "best_fitness"} <= set(state)
    meta = read_metadata(run / "weights" / "best.safetensors")
    assert meta.class_names == ["target"] and meta.imgsz == 96 and meta.nc == 1  # --serve-imgsz
    provenance = meta.provenance
    assert provenance["dataset"] == str(data.resolve()) and provenance["imgsz"] == 64
    assert provenance["serve_imgsz"] == 96
    assert {"command", "hardware", "wall_seconds", "metrics", "epochs"} <= set(provenance)
    assert "map50" in provenance["metrics"]


def test_resume_continues_from_last(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    before = torch.load(copy / "weights" / "last.pt", map_location="cpu", weights_only=True)
    with open(copy / "steps.csv", "a") as handle:  # logged after the last checkpoint, by a run that then died
        handle.write(f"{before['iteration'] + 1},{EPOCHS + 1},0.001,9,9,9,1.0\n")
    result = train(TrainConfig(data="", out=str(copy), resume=True, epochs=EPOCHS + 1, workers=2))
    assert result.epochs_completed == EPOCHS + 1 and result.out_dir == copy
    after = torch.load(copy / "weights" / "last.pt", map_location="cpu", weights_only=True)
    assert after["epoch"] == EPOCHS + 1 and after["iteration"] > before["iteration"]
    assert after["config"]["data"] == before["config"]["data"] and after["config"]["imgsz"] == 64
    assert len(_rows(copy)) == EPOCHS + 1
    assert _step_iterations(copy) == list(range(1, after["iteration"] + 1))  # the orphan row was dropped
    assert float(_rows(copy, "steps.csv")[before["iteration"]]["train/box"]) < 9
    with pytest.raises(Exception, match="already finished"):
        train(TrainConfig(data="", out=str(copy), resume=True, epochs=EPOCHS + 1))


def test_time_limit_stops_cleanly(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, _ = trained
    result = train(
        TrainConfig(data=str(data), imgsz=64, epochs=50, batch=4, workers=0, out=str(tmp_path / "t"), time_limit=0.001)
    )
    assert result.stopped_by_time and result.epochs_completed == 1
    assert result.exported.is_file() and len(_rows(tmp_path / "t")) == 1
    state = torch.load(tmp_path / "t" / "weights" / "last.pt", map_location="cpu", weights_only=True)
    assert _step_iterations(tmp_path / "t")[-1] == state["iteration"]  # the cut-short window is logged too
    assert state["config"]["optimizer"] == "adamw"  # "auto" resolved from the timed step, saved for resuming


def test_val_prints_table_json_and_plot(trained: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    data, run = trained
    weights = str(run / "weights" / "best.safetensors")
    assert main(["val", "--data", str(data), "--weights", weights, "--plots", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "mAP50-95" in table and "Fa/frame" in table and "\n    all" in table or " all " in table
    assert "best Pd at <= 1 false alarm per frame" in table or "keeps false alarms at or below 1" in table
    assert (tmp_path / "pr_curve.png").stat().st_size > 0 and (tmp_path / "pd_fa_curve.png").stat().st_size > 0
    assert main(["val", "--data", str(data), "--weights", weights, "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)  # the progress bar goes to stderr, so stdout stays JSON
    assert "val: 100%" in captured.err and "4/4" in captured.err
    assert result["images"] == 4 and result["all"]["targets"] > 0
    assert {"precision", "recall", "map50", "map50_95", "pd", "fa_per_frame", "pd_by_size"} <= set(result["all"])
    assert result["per_class"][0]["class"] == "target"
    curve = result["pd_fa_curve"]
    assert len(curve["conf"]) == len(curve["pd"]) == len(curve["fa_per_frame"]) == 19
    assert curve["fa_per_frame"] == sorted(curve["fa_per_frame"], reverse=True)  # fewer alarms as conf rises


def test_predict_json_schema(trained: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    data, run = trained
    images = data.parent / "images" / "val"
    weights = str(run / "weights" / "best.safetensors")
    args = ["predict", str(images), str(images / "val_000.png"), "--weights", weights, "--conf", "0.001"]
    assert main([*args, "--format", "json", "--save", str(tmp_path / "drawn")]) == 0
    results = json.loads(capsys.readouterr().out)
    assert len(results) == 5  # the folder's 4 images, then the named file
    for item in results:
        assert set(item) == {"file", "width", "height", "detections"}
        assert item["width"] == 64 and item["height"] == 64 and Path(item["file"]).is_file()
        for detection in item["detections"]:
            assert set(detection) == {"box", "score", "class_id", "class_name"}
            assert len(detection["box"]) == 4 and 0.001 <= detection["score"] <= 1
            assert detection["class_id"] == 0 and detection["class_name"] == "target"
    assert any(item["detections"] for item in results)
    assert len(list((tmp_path / "drawn").glob("*.png"))) == 5


def test_predict_and_val_with_mirror_averaging(trained: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    data, run = trained
    weights = str(run / "weights" / "best.safetensors")
    image = data.parent / "images" / "val" / "val_000.png"
    mirror = tmp_path / "mirror.png"
    Image.open(image).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirror)
    assert main(["predict", str(image), str(mirror), "--weights", weights, "--conf", "0.01", "--tta"]) == 0
    frame, mirrored = (item["detections"] for item in json.loads(capsys.readouterr().out))
    assert frame and len(frame) == len(mirrored)
    for detection in frame:  # the mirror image gets the reflected boxes with the same scores
        x1, y1, x2, y2 = detection["box"]
        assert any(
            other["box"] == pytest.approx([64 - x2, y1, 64 - x1, y2], abs=0.05)
            and other["score"] == pytest.approx(detection["score"], abs=2e-3)
            for other in mirrored
        )
    assert main(["val", "--data", str(data), "--weights", weights, "--json", "--tta"]) == 0
    assert json.loads(capsys.readouterr().out)["all"]["targets"] > 0


def test_predict_without_weights_is_a_clear_error(tmp_path: Path, capsys) -> None:
    image = tmp_path / "a.png"
    write_squares_dataset(tmp_path / "d", train=1, val=0)
    shutil.copy(tmp_path / "d" / "images" / "train" / "train_000.png", image)
    assert main(["predict", str(image), "--weights", str(tmp_path / "missing.safetensors")]) == 1
    assert "weights not found" in capsys.readouterr().err


def test_learning_rate_schedule() -> None:
    from model.train.optim import lr_factor

    assert lr_factor(0.0, 0, 10, lrf=0.01) == pytest.approx(0.1)  # first warm-up step
    assert lr_factor(0.5, 100, 10, lrf=0.01) == pytest.approx(0.505)  # half-way down the cosine
    assert lr_factor(1.0, 200, 10, lrf=0.01) == pytest.approx(0.01)
    assert lr_factor(3.0, 200, 10, lrf=0.01) == pytest.approx(0.01)  # past the budget: stays at the floor
    # a time-limited run that is 5% through its budget has finished warming up, whatever the iteration count
    assert lr_factor(0.05, 2, 1000, lrf=0.01) == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.05)))


def test_presence_class_targets_train_from_the_command_line_and_are_saved(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    data, _ = trained
    out = tmp_path / "p"
    args = ["train", "--data", str(data), "--imgsz", "64", "--epochs", str(EPOCHS), "--batch", "4", "--workers", "0"]
    assert main([*args, "--cls-target", "presence", "--out", str(out), "--seed", "1"]) == 0
    rows = _rows(out)
    assert _total(rows[-1]) < _total(rows[0])
    state = torch.load(out / "weights" / "last.pt", map_location="cpu", weights_only=True)
    assert state["config"]["cls_target"] == "presence"  # a resumed run keeps its class targets


def test_bf16_on_cpu_trains_with_float32_master_weights(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, _ = trained
    out = tmp_path / "b"
    config = TrainConfig(data=str(data), imgsz=64, epochs=EPOCHS, batch=4, workers=0, out=str(out), seed=1)
    config.bf16, config.device = True, "cpu"
    result = train(config)
    rows = _rows(out)
    assert all(math.isfinite(_total(row)) for row in rows) and _total(rows[-1]) < _total(rows[0])
    state = torch.load(result.last, map_location="cpu", weights_only=True)
    assert state["config"]["bf16"] is True
    assert all(tensor.dtype == torch.float32 for tensor in state["model"].values() if tensor.is_floating_point())
    assert read_metadata(result.exported).nc == 1


def test_freeze_trains_only_the_named_rest(trained: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    from model.checkpoint import load_checkpoint

    data, run = trained
    source = run / "weights" / "best.safetensors"
    frozen = ("backbone", "neck", "head.masem", "head.fusions", "head.box_branches")
    args = ["train", "--data", str(data), "--imgsz", "64", "--epochs", "2", "--batch", "4", "--workers", "0"]
    assert main([*args, "--weights", str(source), "--freeze", *frozen, "--out", str(tmp_path / "f")]) == 0
    before = load_checkpoint(source, device="cpu")[0].float().state_dict()
    state = torch.load(tmp_path / "f" / "weights" / "last.pt", map_location="cpu", weights_only=True)
    assert tuple(state["config"]["freeze"]) == frozen  # a resumed run keeps them frozen
    # the frozen part's weights and BatchNorm statistics stay as loaded (the EMA of a constant, up to rounding)
    for key, same in (("model", torch.equal), ("ema", lambda a, b: torch.allclose(a, b, rtol=1e-5, atol=1e-7))):
        after = state[key]
        assert all(same(after[name], before[name]) for name in before if name.startswith(frozen))
        changed = [name for name in before if ".cls_branches." in name and not torch.equal(after[name], before[name])]
        assert any(name.endswith(".weight") for name in changed) and any("running_mean" in name for name in changed)

    assert main([*args, "--weights", str(source), "--freeze", "head.nowhere", "--out", str(tmp_path / "g")]) == 1
    assert "--freeze 'head.nowhere' names no parameters" in capsys.readouterr().err
    everything = [*frozen, "head.cls_branches"]  # head.dfl_bins is left out, but it never trains
    assert main([*args, "--weights", str(source), "--freeze", *everything, "--out", str(tmp_path / "h")]) == 1
    assert "leaves nothing to train" in capsys.readouterr().err
