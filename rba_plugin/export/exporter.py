"""Exporting a model to ONNX or TorchScript: one graph from a raw image to ``sem_seg`` and the
chosen anomaly score maps, traced from the model's own inference code.

The graph (both formats) has two inputs and ``1 + len(scores)`` outputs:

=================  ======================  ===================================================
name               shape / type            meaning
=================  ======================  ===================================================
``image``          1 x 3 x H x W float32   the image as the model's ``"image"`` input: 0..255, not
                                           normalised, channels in ``INPUT.FORMAT`` order, any H, W
``output_size``    int64 [2]               (height, width) of the output maps; (H, W) for the
                                           input size, or the original size of a resized image
``sem_seg``        C x h x w float32       the model's class scores (Mask2Former: L; per-pixel:
                                           logits)
``score_<name>``   h x w float32           each exported anomaly score, higher = more anomalous
=================  ======================  ===================================================

Everything between is the model's own ``forward`` at inference (normalisation, padding to
``size_divisibility``, cropping, resizing, the model's :class:`AnomalyScorer`), traced once with
``torch.jit.trace``. Sizes are traced, not frozen, so one file serves every input size. The
ONNX file is written by PyTorch's TorchScript-based exporter from that trace (opset >= 16 for
GridSample, the deformable attention's traceable formulation).

Nothing wrong is written: a module that declares ``not_exportable`` (a reason string) or that
the trace cannot record (a Python autograd function) is refused by name before anything is
written, and the written graph is run at two input sizes against the PyTorch model before it
is moved to its final name.
"""
from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
import warnings
from typing import Dict, List, Tuple

import onnx
import torch
from torch import nn

from ..engine.predictor import palette_of
from ..modeling.ood.scorer import NAMED_SCORES, PRIMARY_SCORE
from .runtime import INPUT_NAMES, METADATA_KEY, ExportedModel, output_names

__all__ = [
    "EXPORT_FORMATS",
    "DEFAULT_OPSET",
    "ExportError",
    "ExportWrapper",
    "export_blockers",
    "check_exportable",
    "export_model",
    "verification_sizes",
]

logger = logging.getLogger(__name__)

EXPORT_FORMATS = ("onnx", "torchscript")
# GridSample (the deformable attention) needs 16; 17 has LayerNormalization as one node.
DEFAULT_OPSET = 17


class ExportError(RuntimeError):
    """The model cannot be exported as asked; the message names the module or output."""


def export_blockers(model: nn.Module) -> List[Tuple[str, str, str]]:
    """(module name, class name, reason) of every module of ``model`` that declares a
    ``not_exportable`` reason (a class attribute; None or empty = exportable)."""
    found = []
    for name, module in model.named_modules():
        reason = getattr(module, "not_exportable", None)
        if reason:
            found.append((name or "(the model)", type(module).__name__, str(reason)))
    return found


def check_exportable(model: nn.Module) -> None:
    """Raise :class:`ExportError` naming every module that declares it cannot be exported."""
    blockers = export_blockers(model)
    if blockers:
        lines = "; ".join(f"module '{name}' ({cls}): {reason}" for name, cls, reason in blockers)
        raise ExportError(f"cannot export {type(model).__name__}: {lines}. Nothing was written.")


class ExportWrapper(nn.Module):
    """``model([{"image", "height", "width"}])`` at inference as a function of tensors:
    ``(image 1 x 3 x H x W, output_size int64 [2]) -> (sem_seg C x h x w, score maps h x w ...)``
    with the scores of ``model.scorer`` in its order.

    Works for any meta-architecture with Detectron2's semantic-segmentation interface and an
    ``AnomalyScorer`` as ``scorer`` (outputs ``"sem_seg"``, ``"ood_score"``, ``"ood_scores"``).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        scorer = getattr(model, "scorer", None)
        if scorer is None or not getattr(scorer, "names", None):
            raise ExportError(f"{type(model).__name__} has no anomaly scorer (attribute 'scorer'): nothing to export")
        self.model = model
        self.score_names = list(scorer.names)

    def forward(self, image: torch.Tensor, output_size: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        height, width = output_size[0], output_size[1]
        if not torch.jit.is_tracing():  # eager: plain ints, as a data loader gives them
            height, width = int(height), int(width)
        out = self.model([{"image": image[0], "height": height, "width": width}])[0]
        scores = out.get(NAMED_SCORES) or {self.score_names[0]: out[PRIMARY_SCORE]}
        return (out["sem_seg"], *(scores[name] for name in self.score_names))


def _python_ops(graph: torch._C.Graph) -> List[Tuple[str, str]]:
    """(operation, module scope) of every Python call a trace recorded (it cannot be saved or
    exported: the graph would not hold the computation)."""
    found = []
    for node in graph.nodes():
        for block in node.blocks():
            found += _python_ops(block)
        if node.kind() == "prim::PythonOp":
            name = node.pyname() if hasattr(node, "pyname") else node.kind()
            # The innermost module, named as in the model (the wrapper holds it as "model").
            scope = node.scopeName().split("/")[-1].replace("__module.", "")
            scope = scope[len("model."):] if scope.startswith("model.") else "(the model)" if scope in ("", "model") else scope
            found.append((name, scope))
    return found


def _round_up(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def verification_sizes(model: nn.Module, sample_size: Tuple[int, int]) -> List[Tuple[int, int]]:
    """The export size and a second, different one (another aspect ratio; not a multiple of 32
    where the model accepts any size), both multiples of the model's ``input_size_multiple()``."""
    multiple = tuple(model.input_size_multiple()) if hasattr(model, "input_size_multiple") else (1, 1)
    first = tuple(_round_up(s, m) for s, m in zip(sample_size, multiple))
    second = tuple(s + m if m > 1 else s + step for s, m, step in zip(first, multiple, (72, 40)))
    return [first, second]


def _metadata(cfg, model: nn.Module, wrapper: ExportWrapper, fmt: str, opset: int, sizes, errors) -> Dict:
    num_classes = int(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
    multiple = tuple(model.input_size_multiple()) if hasattr(model, "input_size_multiple") else (1, 1)
    return {
        "format": fmt,
        "opset": opset if fmt == "onnx" else None,
        "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
        "inputs": {
            "image": "1 x 3 x H x W float32, 0..255, not normalised, channels in input_format order",
            "output_size": "int64 [2]: height, width of the output maps",
        },
        "outputs": output_names(wrapper.score_names),
        "score_names": wrapper.score_names,
        "num_classes": num_classes,
        "input_format": cfg.INPUT.FORMAT,
        "min_size_test": int(cfg.INPUT.MIN_SIZE_TEST),
        "max_size_test": int(cfg.INPUT.MAX_SIZE_TEST),
        "size_divisibility": int(getattr(model, "size_divisibility", 0) or 0),
        "input_size_multiple": list(multiple),
        "palette": [list(c) for c in palette_of(cfg, num_classes)],
        "verified_sizes": [list(s) for s in sizes],
        "verified_max_abs_error": errors,
        "torch_version": torch.__version__,
    }


def _sample_inputs(size: Tuple[int, int], seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (1, 3, *size), generator=generator).float()
    return image, torch.tensor(size, dtype=torch.int64)


def export_model(
    cfg,
    model: nn.Module,
    path: str,
    fmt: str,
    *,
    sample_size: Tuple[int, int] = (256, 512),
    opset: int = DEFAULT_OPSET,
    tolerance: float = 1e-3,
) -> Dict:
    """Export ``model`` (built from ``cfg``, weights loaded) to ``path`` as ``fmt``.

    The model is traced at ``sample_size`` (rounded up to the model's input-size multiple), then
    the written file is run at that size and at a second one (:func:`verification_sizes`)
    against the PyTorch model; only a file whose every output is within ``tolerance`` (max
    absolute difference) is moved to ``path``.

    Returns:
        The metadata stored in the file (see :mod:`rba_plugin.export.runtime`), including the
        verified sizes and the max absolute error of every output at each.

    Raises:
        ValueError: unknown format, opset below 16.
        ExportError: a module declares it cannot be exported, the trace recorded a Python call
            (naming the module), or the written graph disagrees with the model (naming the
            output and the size). Nothing is written then.
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"export format must be one of {EXPORT_FORMATS}, got {fmt!r}")
    if fmt == "onnx" and opset < 16:
        raise ValueError(f"ONNX opset {opset} lacks GridSample (the deformable attention); use 16 or later")
    check_exportable(model)
    model.eval()
    wrapper = ExportWrapper(model).eval()
    sizes = verification_sizes(model, sample_size)
    names = output_names(wrapper.score_names)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    os.close(fd)
    try:
        start = time.perf_counter()
        with torch.no_grad(), warnings.catch_warnings():
            # The trace warns at every Python test of a traced size (shape checks); the
            # verification below is what tells whether a frozen value changed the result.
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            # TorchScript is deprecated upstream in favour of torch.export; it is still the
            # format this export writes and the trace its ONNX file is made from.
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.trace", category=FutureWarning)
            traced = torch.jit.trace(wrapper, _sample_inputs(sizes[0]), check_trace=False, strict=False)
        python_ops = _python_ops(traced.inlined_graph)
        if python_ops:
            found = "; ".join(f"{op} in module '{scope}'" for op, scope in python_ops)
            raise ExportError(
                f"cannot export {type(model).__name__}: the trace recorded Python calls that no graph can hold "
                f"({found}). Nothing was written."
            )
        if fmt == "torchscript":
            _save_torchscript(traced, tmp)
        else:
            _export_onnx(traced, sizes[0], names, tmp, opset)
        logger.info("traced and wrote %s in %.1f s; verifying at %s", fmt, time.perf_counter() - start, sizes)

        exported = ExportedModel(tmp, names=names)
        errors = {}
        for seed, size in enumerate(sizes):
            inputs = _sample_inputs(size, seed=seed + 1)
            with torch.no_grad():
                expected = dict(zip(names, wrapper(*inputs)))
            try:
                got = exported(*inputs)
            except Exception as error:  # e.g. a size frozen into a reshape at export
                raise ExportError(
                    f"the exported {fmt} graph fails at input size {size[0]}x{size[1]} ({type(error).__name__}: "
                    f"{str(error).splitlines()[0][:300]}): a size was frozen at export. Nothing was written."
                ) from error
            errors["x".join(map(str, size))] = {}
            for name in names:
                if got[name].shape != expected[name].shape:
                    raise ExportError(
                        f"the exported {fmt} graph's '{name}' has shape {tuple(got[name].shape)} at input size "
                        f"{size[0]}x{size[1]}, the model's {tuple(expected[name].shape)}: a size was frozen at "
                        f"export. Nothing was written."
                    )
                err = float((got[name] - expected[name]).abs().max())
                errors["x".join(map(str, size))][name] = err
                if not err <= tolerance:
                    raise ExportError(
                        f"the exported {fmt} graph's '{name}' differs from the model by {err:.3g} (tolerance "
                        f"{tolerance:g}) at input size {size[0]}x{size[1]}. Nothing was written."
                    )
        metadata = _metadata(cfg, model, wrapper, fmt, opset, sizes, errors)
        _write_metadata(tmp, fmt, metadata, traced)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would make the exported file private
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return metadata


def _export_onnx(traced: torch.jit.ScriptModule, size, names: List[str], path: str, opset: int) -> None:
    dynamic = {"image": {2: "height", 3: "width"}, names[0]: {1: "out_height", 2: "out_width"}}
    dynamic.update({name: {0: "out_height", 1: "out_width"} for name in names[1:]})
    with torch.no_grad(), warnings.catch_warnings():
        # PyTorch's TorchScript-based exporter: it exports the trace above as it is (its
        # torch.export-based exporter would retrace and needs onnxscript).
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx.*")
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r"no signature found", category=UserWarning)
        warnings.filterwarnings("ignore", message=r"Constant folding - Only steps=1", category=UserWarning)
        torch.onnx.export(
            traced,
            _sample_inputs(size),
            path,
            dynamo=False,
            opset_version=opset,
            input_names=list(INPUT_NAMES),
            output_names=names,
            dynamic_axes=dynamic,
            do_constant_folding=True,
        )


def _save_torchscript(traced: torch.jit.ScriptModule, path: str, extra_files: Dict[str, str] = None) -> None:
    with warnings.catch_warnings():  # deprecated upstream, still how TorchScript is written
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.save", category=FutureWarning)
        torch.jit.save(traced, path, _extra_files=extra_files or {})


def _write_metadata(path: str, fmt: str, metadata: Dict, traced: torch.jit.ScriptModule) -> None:
    text = json.dumps(metadata)
    if fmt == "torchscript":
        _save_torchscript(traced, path, {f"{METADATA_KEY}.json": text})
        return
    proto = onnx.load(path)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, text
    onnx.save(proto, path)
