"""Runs in the current process, set up exactly as ``tools/train_net.py`` does: for tools that
chain several runs (the demo, the method comparison, RAML's incremental stages)."""
from __future__ import annotations

import contextlib
import logging
from typing import Iterator, Mapping, Sequence

from torch import nn

from ..engine import SafeCheckpointer, Trainer
from ..engine.defaults import setup

__all__ = ["setup_run", "train_run", "load_run_model", "evaluate_run", "isolated_logging"]

# Loggers that detectron2's default_setup / setup_logger give handlers (console and log.txt).
_RUN_LOGGERS = ("detectron2", "fvcore", "rba_plugin")


@contextlib.contextmanager
def isolated_logging() -> Iterator[None]:
    """Removes on exit the log handlers added inside: each run's setup adds a console and a
    log.txt handler, and without this later runs of the same process would write into earlier
    runs' log.txt and repeat every console line."""
    loggers = [logging.getLogger(name) for name in _RUN_LOGGERS]
    before = {logger.name: list(logger.handlers) for logger in loggers}
    try:
        yield
    finally:
        for logger in loggers:
            for handler in [h for h in logger.handlers if h not in before[logger.name]]:
                logger.removeHandler(handler)  # its stream is detectron2's cached one: left open


def setup_run(config_file: str, opts: Sequence[str]):
    """Frozen config from ``config_file`` and KEY VALUE ``opts``; logging, seeding and the config
    dump in OUTPUT_DIR as ``tools/train_net.py`` does them (:func:`rba_plugin.engine.defaults.setup`)."""
    return setup(config_file, opts)


def train_run(cfg, resume: bool = False) -> nn.Module:
    """Trains from MODEL.WEIGHTS (or, with ``resume``, from OUTPUT_DIR's last checkpoint) to
    SOLVER.MAX_ITER (OUTPUT_DIR/model_final.pth); returns the trained model."""
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=resume)
    if trainer.start_iter < cfg.SOLVER.MAX_ITER:
        trainer.train()
    return trainer.model


def load_run_model(cfg, weights: str = None) -> nn.Module:
    """The model of ``cfg`` with ``weights`` (default MODEL.WEIGHTS) loaded, in eval mode; every
    module of the model must be in the checkpoint (unless MODEL.ALLOW_PARTIAL_LOAD)."""
    model = Trainer.build_model(cfg)
    SafeCheckpointer(cfg, model, allow_new_modules=False).load(weights or cfg.MODEL.WEIGHTS)
    return model.eval()


def evaluate_run(cfg, model: nn.Module, datasets: Sequence[str]) -> Mapping[str, Mapping]:
    """``{dataset: evaluator results}`` of ``model`` on ``datasets`` (always keyed by dataset)."""
    eval_cfg = cfg.clone()
    eval_cfg.defrost()
    eval_cfg.DATASETS.TEST = tuple(datasets)
    eval_cfg.freeze()
    results = Trainer.test(eval_cfg, model)
    # Detectron2 unwraps the results of a single dataset.
    return results if len(datasets) > 1 else {datasets[0]: results}
