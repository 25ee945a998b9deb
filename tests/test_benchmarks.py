"""The GPU benchmark's code runs (a CPU smoke run at tiny widths) and its hand-written FastV anchor
computes exactly what `prune.run(..., "fastv")` computes (the script exits non-zero otherwise)."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REALPROC = ROOT.parent / "shared" / "realproc"


@pytest.mark.skipif(not REALPROC.is_dir(), reason="needs ../shared/realproc")
def test_gpu_latency_smoke_run_on_cpu():
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_latency.py"), "--device", "cpu", "--small", "--repeats", "1",
           "--methods", "fastv,adaptprune", "--keeps", "0.25", "--shapes", "llava-1.5:1", "--collector", "llava-1.5:1",
           "--realproc", str(REALPROC)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    for row in ("none", "fastv", "adaptprune", "anchor-fastv", "collector", "eager"):
        assert any(line.startswith(row) for line in out.stdout.splitlines()), out.stdout
