"""`masenet info` and `masenet bench model`, run in-process through the command line entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from model.bench import BenchRow, format_table
from model.cli_args import parse_size
from model.ops import merge_tta
from service.cli import main


def test_info_json(capsys):
    assert main(["info", "--scale", "n", "--nc", "3", "--json", "--imgsz", "64"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info) >= {"name", "scale", "nc", "parameters", "gflops", "imgsz", "strides"}
    assert info["parameters"] == 6_281_283
    assert info["strides"] == [4, 8, 16, 32] and info["name"] == "masenet-n" and info["imgsz"] == 64
    # FLOPs grow with the pixel count: 24.35 GFLOPs at 640 means about 0.24 at 64.
    assert 0.2 < info["gflops"] < 0.3


def test_info_text(capsys):
    assert main(["info", "--nc", "1", "--imgsz", "32"]) == 0
    out = capsys.readouterr().out
    assert "parameters:" in out and "GFLOPs at 32x32" in out and "strides: 4, 8, 16, 32" in out


def test_bench_model_runs_every_runtime_side_by_side(capsys):
    argv = ["bench", "model", "--batch-sizes", "1", "--sizes", "60x30", "--pixel-scale", "1.5", "--iters", "1"]
    assert main([*argv, "--warmup", "0"]) == 0
    captured = capsys.readouterr()
    assert "60x30" in captured.out and "96x64" in captured.out  # the frame resized by 1.5 and stride-padded
    for path in ("eager ms", "torch ms", "openvino ms", "onnxruntime ms", "x openvino", "first call"):
        assert path in captured.out
    assert "60x30 (input 96x64) batch 1" in captured.err  # progress goes to stderr


def test_bench_model_tta_mirrors_both_paths_and_counts_frames(capsys, monkeypatch):
    import model.bench

    merged_batches = []

    def spy(levels, views, reg_max=16):
        merged_batches.append(levels[0].shape[0])
        return merge_tta(levels, views, reg_max)

    monkeypatch.setattr(model.bench, "merge_tta", spy)
    argv = ["bench", "model", "--batch-sizes", "3", "--sizes", "64x32", "--iters", "2", "--warmup", "1", "--tta"]
    assert main([*argv, "--runtimes", "torch", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    # eager and torch: 1 first call, 1 warm-up + 2 timed runs each, every forward holding 3 frames and their 3 mirrors
    assert merged_batches == [6] * 8
    assert row["batch"] == 3 and row["width"] == 64 and set(row["times_ms"]) == {"eager", "torch"}


def test_bench_helpers():
    assert parse_size("640x512") == (640, 512)
    row = BenchRow(320, 256, 480, 384, 8, {"eager": 400.0, "openvino": 200.0}, {"eager": 500.0, "openvino": 900.0})
    assert (row.images_per_second("eager"), row.images_per_second("openvino"), row.speedup("openvino")) == (20, 40, 2)
    table = format_table([row])
    assert "2.00x" in table and "480x384" in table and "openvino 900" in table


def test_main_asks_for_huge_pages_unless_told_otherwise(monkeypatch, capsys):
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    assert main(["info", "--imgsz", "32"]) == 0
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "1"
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "0")
    assert main(["info", "--imgsz", "32"]) == 0
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "0"


_BENCH_AND_COUNT = """
import resource, sys
from service.cli import main
code = main(["bench", "model", "--sizes", "640x512", "--batch-sizes", "4", "--iters", "2", "--warmup", "0"])
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt, file=sys.stderr)
sys.exit(code)
"""


def _page_faults_of_a_bench(env: dict[str, str]) -> int:
    """Minor page faults of a fresh `masenet bench model` process, counted by the process itself."""
    done = subprocess.run([sys.executable, "-c", _BENCH_AND_COUNT], env=env, check=True, capture_output=True, text=True)
    return int(done.stderr.split()[-1])


def test_huge_pages_reach_torch_before_its_first_allocation():
    mode = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not mode.is_file() or "[never]" in mode.read_text():
        pytest.skip("this kernel has transparent huge pages switched off, so there is nothing to measure")
    env = {key: value for key, value in os.environ.items() if key != "THP_MEM_ALLOC_ENABLE"}
    small_pages = _page_faults_of_a_bench({**env, "THP_MEM_ALLOC_ENABLE": "0"})
    default = _page_faults_of_a_bench(env)
    # every large activation faulted in 4 KiB at a time, against 2 MiB pages: here about 600,000 against 135,000
    assert default < small_pages / 2, (default, small_pages)
