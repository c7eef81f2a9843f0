"""tools/benchmark.py pixel --smoke: every official network and the Detectron2 DeepLabV3+ R101
baseline run in fresh processes at a tiny size and print one line each with ratios."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from .conftest import REPO_ROOT


@pytest.mark.slow
def test_pixel_benchmark_smoke_mode():
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools/benchmark.py"), "pixel", "--smoke", "--threads", "1"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("pixel 64x128 ")]
    cases = [line.split()[2] for line in lines]
    assert cases == ["d2_deeplabv3plus_r101", "pebal", "rpl_corocl", "densehybrid", "raml"]
    for line in lines[1:]:
        assert re.search(r"\| x\d+\.\d+ time, x\d+\.\d+ CPU time, x\d+\.\d+ peak memory of d2_deeplabv3plus_r101$", line), line
    assert re.search(r"pebal +137\.1 M params", lines[1]) and re.search(r"rpl_corocl +168\.0 M params", lines[2])


def test_pixel_benchmark_refuses_unknown_cases():
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools/benchmark.py"), "pixel", "--smoke", "--cases", "pebal,segformer"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=300,
    )
    assert proc.returncode != 0 and "unknown cases ['segformer']" in proc.stderr
