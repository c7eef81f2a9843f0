"""The eval benchmark runs end to end on tiny frames (``--smoke``), so it cannot silently rot."""
import argparse
import re
import sys

from .conftest import REPO_ROOT


def test_eval_benchmark_smoke(capsys):
    sys.path.insert(0, str(REPO_ROOT / "tools"))
    try:
        from benchmarks import eval as eval_benchmark
    finally:
        sys.path.remove(str(REPO_ROOT / "tools"))
    parser = argparse.ArgumentParser()
    eval_benchmark.add_arguments(parser)
    eval_benchmark.run(parser.parse_args(["--smoke"]))
    out = capsys.readouterr().out
    for line in ("eval exact pixel metrics (float32)", "eval old float16 histogram", "eval scikit-learn",
                 "eval exact vs scikit-learn on those frames", "protocol smiyc", "eval speed-up",
                 "eval exact + components", "eval exact pixel metrics, 4 frames"):
        assert line in out, (line, out)
    gaps = re.search(r"\|dAP\| (\S+) \|dAUROC\| (\S+) \|dFPR95\| (\S+);", out)
    assert gaps and all(float(g) < 1e-12 for g in gaps.groups()), out  # exact = scikit-learn
