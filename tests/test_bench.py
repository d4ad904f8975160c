"""bench.py: both setups measured and the ratios read as they should."""
import pytest
from conftest import run_script


@pytest.mark.slow
def test_bench_measures_both_setups_and_prints_ratios(demo_root, tmp_path):
    result = run_script("bench.py", "--root_dir", demo_root, "--num_workers", "0", "--batch_size", "8",
                        "--steps", "1", "--latency_runs", "3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for measure in ("data loading (images/s)", "training step (images/s)", "training epoch (images/s)",
                    "checkpoint write (% of the epoch)", "PyTorch eager batch 1, median (ms)",
                    "ONNX Runtime batch 1, p95 (ms)"):
        assert f"| {measure} |" in result.stdout
    assert "ONNX Runtime (project) vs PyTorch eager (reference), batch-1 median:" in result.stdout


def test_speedups_and_slowdowns_read_as_such():
    from bench import speedup

    assert speedup(1.5) == "1.50x faster" and speedup(0.8) == "1.25x slower"
