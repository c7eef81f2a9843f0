"""Every benchmark runs end to end in its ``--smoke`` mode (tiny sizes, in-process), so none can
silently rot (``tools/benchmark.py model`` once crashed on a changed helper). The eval
benchmark's smoke test is tests/test_eval_benchmark.py."""
import argparse
import importlib
import re
import sys

import pytest

from rba_plugin.layers import compiled_op_available

from .conftest import REPO_ROOT


def _benchmark(name: str):
    sys.path.insert(0, str(REPO_ROOT / "tools"))
    try:
        return importlib.import_module(f"benchmarks.{name}")
    finally:
        sys.path.remove(str(REPO_ROOT / "tools"))


def _run(name: str, argv, capsys) -> str:
    module = _benchmark(name)
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    module.run(parser.parse_args(argv))
    return capsys.readouterr().out


def test_every_benchmark_has_a_smoke_mode():
    sys.path.insert(0, str(REPO_ROOT / "tools"))
    try:
        benchmark = importlib.import_module("benchmark")
    finally:
        sys.path.remove(str(REPO_ROOT / "tools"))
    for name in benchmark.BENCHMARKS:
        parser = argparse.ArgumentParser()
        _benchmark(name).add_arguments(parser)
        assert parser.parse_args(["--smoke"]).smoke, name


@pytest.mark.skipif(not compiled_op_available(), reason="the msda benchmark compares the compiled op")
def test_msda_benchmark_smoke(capsys):
    out = _run("msda", ["--smoke"], capsys)
    assert re.search(r"msda fwd +compiled .* speed-up x\d", out), out
    assert re.search(r"msda fwd\+bwd +compiled .* speed-up x\d", out), out


def test_finetune_benchmark_smoke(capsys):
    out = _run("finetune", ["--smoke", "--threads", "1"], capsys)
    assert "official style (frozen requires_grad=False, train mode)" in out, out
    assert re.search(r"finetune 1T second baseline, not the official code .* ours x\d", out), out


def test_model_benchmark_smoke(capsys):
    out = _run("model", ["--smoke"], capsys)
    for case in ("unfused", "fused_mkl", "fused", "onnxruntime"):
        assert re.search(rf"model 1T {case} +: wall +[\d.]+ ms +CPU +[\d.]+ ms +peak", out), (case, out)
    assert re.search(r"model 1T fused vs unfused \(official speed\): x[\d.]+ wall, x[\d.]+ CPU", out), out
    assert re.search(r"model 1T onnxruntime vs PyTorch fused: (onnxruntime|PyTorch fused) faster by CPU time", out), out
    diffs = re.search(r"unfused sem_seg (\S+), rba (\S+); fused_mkl sem_seg (\S+), rba (\S+); "
                      r"onnxruntime sem_seg (\S+), rba (\S+)", out)
    assert diffs and all(float(d) < 1e-3 for d in diffs.groups()), out  # same model, same numbers
    assert "official style (frozen requires_grad=False, train mode)" in out, out
