"""`make bench-gpu`'s script runs end to end: ``benchmarks/gpu_bench.py --smoke`` at tiny sizes on the CPU.

The figures of a smoke run mean nothing (the GPU run's do, docs/performance.md); what is checked is that every part
ran and reported what the GPU table needs, so the one device run a task may get is not spent on a crash.
"""

import json

import pytest

pytestmark = pytest.mark.slow  # ~10 s of work plus imports on the 2-core machine


def test_smoke_run_reports_every_part(tmp_path):
    from benchmarks.gpu_bench import SMOKE, main

    result = main(["--smoke", "--device", "cpu", "--json", str(tmp_path / "bench.json")])
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["sizes"]["preset"] == "tiny" and saved["env"]["device"].startswith("cpu")
    assert result.unet["gflops_per_forward"] > 0 and result.unet["tflops"] > 0
    assert [(r["K"], r["checkpointing"]) for r in result.alignment] == [
        (k, c) for c in (False, True) for k in SMOKE.align_ks
    ]
    assert all(r["step_s"] > 0 for r in result.alignment)
    assert result.generation["ours_s_per_image"] > 0 and result.generation["pipeline_s_per_image"] > 0
    assert result.mllm["forward_s"] > 0 and result.mllm["cache_read_s"] > 0
    assert "| alignment step | T=4 K=2 checkpointing=True |" in result.table()


def test_full_sizes_are_sd15_at_512_px_in_bf16():
    from benchmarks.gpu_bench import FULL, QWEN2_VL_2B

    assert (FULL.preset, FULL.image, FULL.dtype, FULL.align_ks) == ("sd15", 512, "bfloat16", [1, 2, 4])
    assert FULL.mllm == QWEN2_VL_2B and QWEN2_VL_2B["hidden_size"] == 1536 and QWEN2_VL_2B["num_hidden_layers"] == 28
