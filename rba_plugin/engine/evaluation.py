"""Running a model over a dataset with a progress bar (detectron2's inference_on_dataset logs
only every few seconds; interactive runs such as `make demo` want a bar)."""
from __future__ import annotations

from typing import Dict, Iterable, Optional

import torch
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from torch import nn
from tqdm import tqdm

__all__ = ["evaluate_with_progress"]


def evaluate_with_progress(
    model: nn.Module,
    data_loader: Iterable,
    evaluator: DatasetEvaluator,
    description: str = "evaluating",
    total: Optional[int] = None,
) -> Dict:
    """Run ``model`` in eval mode over ``data_loader``, feed ``evaluator`` and return its results.

    The bar shows on the main process only; the model's training mode is restored afterwards.
    """
    evaluator.reset()
    was_training = model.training
    model.eval()
    if total is None and hasattr(data_loader, "__len__"):
        total = len(data_loader)
    bar = tqdm(data_loader, total=total, desc=description, unit="img", disable=not comm.is_main_process())
    try:
        with torch.no_grad():
            for inputs in bar:
                evaluator.process(inputs, model(inputs))
    finally:
        model.train(was_training)
    results = evaluator.evaluate()
    return results if results is not None else {}
