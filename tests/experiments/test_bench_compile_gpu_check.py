"""bench_compile and gpu_check on tiny settings: every figure they report, from real compiles and runs.

Timings are never asserted (the machine is shared). What is asserted: bench_compile's scanned step (layer
weights stored stacked) keeps one leaf per weight kind and a program that does not grow with depth, as the
unrolled one's does;
gpu_check's ``--tiny`` runs every stage (our train step and sampler, PyTorch's step and transformers'
generate) through the code the GPU run takes, each in its own process, and reports the headline figures.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "experiments" / "benchmarks"


def _json_line(command: list[str]) -> dict:
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=1200, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # four compiles of a train step: about a minute on the 2-core CI machine
def test_bench_compile_reports_scanned_and_unrolled_compiles_by_depth():
    result = _json_line(
        [
            sys.executable,
            str(BENCHMARKS / "bench_compile.py"),
            "--layers",
            "2",
            "4",
            "--variants",
            "scan",
            "unrolled",
            "--width",
            "64",
            "--vocab",
            "256",
            "--length",
            "32",
        ]
    )
    for key in ("compile_s_scan", "compile_s_unrolled", "cpu_s_scan", "fusions_scan", "scan4_over_scan2"):
        assert key in result, key
    assert set(result["compile_s_scan"]) == {"2", "4"} and all(
        v > 0 for v in result["compile_s_scan"].values()
    )
    scan, unrolled = result["fusions_scan"], result["fusions_unrolled"]
    # unrolled: every layer adds its body's and its weights' update kernels; scanned over stacked weights: the
    # loop's body and one update per weight kind are all there is, whatever the depth
    assert unrolled["4"] > unrolled["2"]
    assert scan["4"] == scan["2"]


@pytest.mark.slow  # five child processes (JAX, PyTorch), about two minutes on the 2-core CI machine
def test_gpu_check_tiny_runs_every_stage_and_reports_the_headline_figures():
    result = _json_line([sys.executable, str(BENCHMARKS / "gpu_check.py"), "--tiny"])
    errors = {name: stage.get("error") for name, stage in result["stages"].items() if "error" in stage}
    assert not errors, errors
    assert set(result["stages"]) == {"peak", "ours_train", "torch_train", "ours_generate", "hf_generate"}
    for key in (
        "train_tokens_per_s_ours",
        "train_tokens_per_s_torch",
        "train_speedup_vs_torch",
        "decode_tokens_per_s_ours",
        "decode_tokens_per_s_hf",
        "decode_speedup_vs_hf",
        "compile_s_train_ours",
    ):
        assert result[key] > 0, key
    ours = result["stages"]["ours_train"]
    assert ours["skipped"] == 0 and ours["loss"] == ours["loss"]  # a finite, applied update
    assert result["mfu_ours"] is None  # no datasheet peak for a CPU: no MFU is made up
    assert set(result["targets_met"]) == {
        "mfu_ours>=0.40",
        "train_speedup_vs_torch>=1.0",
        "decode_speedup_vs_hf>=2.0",
        "compile_s_train_ours<60",
    }
