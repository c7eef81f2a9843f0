"""OODEvaluator: Detectron2 DatasetEvaluator for anomaly segmentation (SMIYC metrics, mIoU)."""
from __future__ import annotations

import copy
import json
import logging
import os
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from ..config import check_config
from ..data.anomaly_datasets import load_anomaly_label, load_sem_seg_label
from ..utils.atomic_write import atomic_open
from ..utils.tables import markdown_table
from .anomaly_metrics import PROTOCOLS, AnomalyMetrics, to_numpy
from .components import TRACK_SIZE_FILTERS, ComponentStats
from .curves import write_curves
from .pixel_exact import PixelResult
from .sem_seg_metrics import UnknownIoU, confusion_matrix, mean_iou, per_class_iou

__all__ = ["OODEvaluator", "PRIMARY_SCORE"]

# The model output convention (DESIGN.md): the first configured score and every score by name.
PRIMARY_SCORE = "ood_score"
NAMED_SCORES = "ood_scores"
# Optional H x W bool output of open-set models (VCA): the pixels predicted as "unknown".
UNKNOWN_MASK = "unknown_mask"
# Reported in percent, like Detectron2's mIoU and the benchmark tables.
_PERCENT_KEYS = {"AP", "AUROC", "FPR95", "pixel_F1", "sIoU", "PPV", "mean_F1", "F1_25", "F1_50", "F1_75"}
_UNKNOWN_IOU_KEY = "unknown_IoU"
# Columns of the logged table (the JSON holds every metric).
_TABLE_KEYS = ("AP", "FPR95", "AUROC", "sIoU", "PPV", "mean_F1")


class OODEvaluator(DatasetEvaluator):
    """Evaluates ``outputs[i]["ood_score"]`` (H x W, higher = more anomalous) against the dataset's
    0 / 1 / 255 anomaly labels, every entry of ``outputs[i]["ood_scores"]`` (name -> H x W) too,
    and ``outputs[i]["sem_seg"]`` (C x H x W) for closed-set mIoU where the dataset dicts have a
    ``sem_seg_file_name``.

    ``evaluate()`` returns ``{dataset_name: {metric: value}}``: the primary score's metrics under
    plain keys ("AP", "AUROC", "FPR95", "sIoU", "PPV", "mean_F1", ...), other scores under
    "<name>/AP" and so on, and "mIoU". When outputs hold ``"unknown_mask"`` (H x W bool, an
    open-set model's unknown-class prediction), "unknown_IoU" is the class-agnostic IoU of those
    pixels with the anomaly pixels (label 1, void excluded), pooled over the dataset. AP, AUROC, FPR95, F1s, sIoU, PPV and mIoU are percentages;
    "component_threshold" is the score threshold delta, FN_* / FP_* are component counts.

    ``protocol`` (``TEST.OOD.PROTOCOL``): "exact" (default) evaluates the float32 scores exactly;
    "smiyc" reproduces the official Segment-Me-If-You-Can numbers (float16 scores, per-frame
    percentile bins); see :class:`AnomalyMetrics` and ``docs/evaluation_protocols.md``.
    In distributed runs every process computes the pooled pixel metrics collectively
    (coarse histograms and per-range value counts, or the SMIYC per-frame bins, are exchanged
    with ``comm.all_gather``), then runs the component pass on its own cached maps at the common
    threshold, and the per-component values are gathered to the main process.
    """

    @configurable
    def __init__(
        self,
        dataset_name: str,
        output_dir: Optional[str] = None,
        distributed: bool = True,
        *,
        with_components: bool = True,
        component_threshold: Optional[float] = None,
        component_sizes: Optional[Tuple[int, int]] = None,
        cache_memory_mb: float = 2048,
        write_curves: bool = True,
        protocol: str = "exact",
    ):
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol (config key TEST.OOD.PROTOCOL) must be one of {PROTOCOLS}, got {protocol!r}")
        self.protocol = protocol
        self.dataset_name = dataset_name
        self.output_dir = output_dir
        self.distributed = distributed
        self.with_components = with_components
        self.component_threshold = component_threshold
        meta = MetadataCatalog.get(dataset_name)
        if component_sizes is None:
            component_sizes = meta.get("ood_component_sizes", None) or TRACK_SIZE_FILTERS[meta.get("ood_track", "anomaly")]
        if len(component_sizes) != 2:
            raise ValueError(
                "component_sizes (TEST.OOD.COMPONENT_SIZES) must hold 2 values [min predicted, min ground-truth] "
                f"in pixels, got {list(component_sizes)}"
            )
        self.component_sizes = tuple(int(s) for s in component_sizes)
        self.cache_memory_bytes = int(cache_memory_mb * 2**20)
        self.write_curves = write_curves
        self.stuff_classes = list(meta.get("stuff_classes", []))
        self.ignore_label = meta.get("ignore_label", 255)
        self._logger = logging.getLogger(__name__)
        self._catalog: Optional[Dict[str, dict]] = None  # file_name -> dataset dict, when needed
        self.reset()

    @classmethod
    def from_config(cls, cfg, dataset_name: str, output_dir: Optional[str] = None, distributed: bool = True):
        check_config(cfg, prefix="TEST.OOD.")
        ood = cfg.TEST.OOD
        return {
            "dataset_name": dataset_name,
            "output_dir": output_dir if output_dir is not None else cfg.OUTPUT_DIR,
            "distributed": distributed,
            "with_components": ood.WITH_COMPONENTS,
            "component_threshold": ood.COMPONENT_THRESHOLD,
            "component_sizes": tuple(ood.COMPONENT_SIZES) if len(ood.COMPONENT_SIZES) else None,
            "cache_memory_mb": ood.CACHE_MEMORY_MB,
            "write_curves": ood.WRITE_CURVES,
            "protocol": ood.PROTOCOL,
        }

    def reset(self) -> None:
        if getattr(self, "_metrics", None):
            for metrics in self._metrics.values():
                metrics.close()
        self._metrics: Dict[str, AnomalyMetrics] = OrderedDict()
        num_classes = len(self.stuff_classes)
        self._confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
        self._has_sem_seg = False
        self._unknown_iou = UnknownIoU()
        self._has_unknown = False

    def _new_metrics(self) -> AnomalyMetrics:
        return AnomalyMetrics(
            component_threshold=self.component_threshold,
            min_pred_size=self.component_sizes[0],
            min_gt_size=self.component_sizes[1],
            with_components=self.with_components,
            cache_memory_bytes=self.cache_memory_bytes,
            protocol=self.protocol,
        )

    def _scores_of(self, output: dict) -> Dict[str, torch.Tensor]:
        """"ood_score" and every other entry of "ood_scores" (the primary one is not repeated)."""
        scores = OrderedDict()
        if PRIMARY_SCORE in output:
            scores[PRIMARY_SCORE] = output[PRIMARY_SCORE]
        for name, score in output.get(NAMED_SCORES, {}).items():
            if name == PRIMARY_SCORE or any(score is other for other in scores.values()):
                continue  # the primary score repeated under its own name
            scores[name] = score
        if not scores:
            raise KeyError(f"model output has neither '{PRIMARY_SCORE}' nor '{NAMED_SCORES}'")
        return scores

    @staticmethod
    def _at_label_size(score, shape: Tuple[int, int]) -> np.ndarray:
        """The H x W score as numpy at the label's resolution (bilinear when it differs).

        float64 scores stay float64 (AnomalyMetrics says what rounding them costs); the others are
        interpolated in float32.
        """
        array = to_numpy(score)
        if tuple(array.shape[-2:]) != tuple(shape):
            dtype = torch.float64 if array.dtype == np.float64 else torch.float32
            tensor = torch.as_tensor(array, dtype=dtype)[None, None]
            array = F.interpolate(tensor, size=shape, mode="bilinear", align_corners=False)[0, 0].numpy()
        return array if array.dtype == np.float64 else array.astype(np.float32, copy=False)

    def _full_record(self, record: dict) -> dict:
        """The input completed from the catalog: test mappers drop file keys (e.g. Detectron2's
        DatasetMapper pops sem_seg_file_name), so they are looked up by file_name like
        SemSegEvaluator does."""
        if "anomaly_label_file" in record and "sem_seg_file_name" in record:
            return record
        if self._catalog is None:
            self._catalog = {d["file_name"]: d for d in DatasetCatalog.get(self.dataset_name)}
        if record.get("file_name") not in self._catalog:
            if "anomaly_label_file" in record:
                return record
            raise KeyError(f"input {record.get('file_name')!r} is not a frame of dataset '{self.dataset_name}'")
        return {**self._catalog[record["file_name"]], **record}

    def process(self, inputs: List[dict], outputs: List[dict]) -> None:
        for record, output in zip(inputs, outputs):
            record = self._full_record(record)
            label = load_anomaly_label(record)
            for name, score in self._scores_of(output).items():
                if name not in self._metrics:
                    self._metrics[name] = self._new_metrics()
                self._metrics[name].update(self._at_label_size(score, label.shape), label,
                                           frame=record.get("file_name", record.get("image_id")))
            if UNKNOWN_MASK in output:
                self._update_unknown(output[UNKNOWN_MASK], label)
            if "sem_seg" in output and record.get("sem_seg_file_name") and len(self.stuff_classes):
                self._update_confusion(output["sem_seg"], load_sem_seg_label(record))

    def _update_unknown(self, unknown_mask, label: np.ndarray) -> None:
        mask = torch.as_tensor(to_numpy(unknown_mask)).bool()
        if tuple(mask.shape) != tuple(label.shape):  # nearest: a mask stays a mask
            mask = F.interpolate(mask[None, None].float(), size=label.shape, mode="nearest")[0, 0].bool()
        self._unknown_iou.update(mask, torch.as_tensor(label))
        self._has_unknown = True

    def _gathered_unknown_iou(self) -> Optional[float]:
        """Pooled unknown IoU (percent) over every process; None when no output had a mask."""
        counts = (self._unknown_iou.intersection, self._unknown_iou.union, self._has_unknown)
        if self.distributed and comm.get_world_size() > 1:
            gathered = comm.all_gather(counts)
        else:
            gathered = [counts]
        if not any(g[2] for g in gathered):
            return None
        total = UnknownIoU()
        total.intersection = sum(g[0] for g in gathered)
        total.union = sum(g[1] for g in gathered)
        return total.compute()

    def _update_confusion(self, sem_seg, gt: np.ndarray) -> None:
        pred = to_numpy(sem_seg.argmax(dim=0) if hasattr(sem_seg, "argmax") else np.argmax(sem_seg, 0))
        self._confusion += confusion_matrix(pred, gt, len(self.stuff_classes), self.ignore_label)
        self._has_sem_seg = True

    # ------------------------------------------------------------------------- evaluate

    def _score_names(self) -> List[str]:
        """Evaluated score names, the same list in every process."""
        names = list(self._metrics)
        if not self.distributed or comm.get_world_size() == 1:
            return names
        return sorted(set().union(*comm.all_gather(names)), key=lambda n: (n != PRIMARY_SCORE, n))

    def evaluate(self):
        names = self._score_names()
        gather = comm.all_gather if self.distributed and comm.get_world_size() > 1 else None
        pixel: Dict[str, PixelResult] = OrderedDict()
        component_stats: Dict[str, ComponentStats] = {}
        thresholds: Dict[str, Optional[float]] = {}
        for name in names:
            if name not in self._metrics:  # this process saw no frame with this score
                self._metrics[name] = self._new_metrics()
            metrics = self._metrics[name]
            pixel[name] = metrics.pixel_result(gather)  # collective when distributed
            if self.with_components:
                thresholds[name] = metrics.component_threshold(pixel[name])
                component_stats[name] = (
                    metrics.component_stats(thresholds[name]) if thresholds[name] is not None else ComponentStats()
                )
        unknown_iou = self._gathered_unknown_iou()
        confusion = self._confusion
        has_sem_seg = self._has_sem_seg
        if self.distributed and comm.get_world_size() > 1:
            gathered = comm.gather((component_stats, confusion, has_sem_seg), dst=0)
            if not comm.is_main_process():
                self.reset()
                return {}
            component_stats = {}
            for stats, conf, has in gathered:
                for name, part in stats.items():
                    component_stats.setdefault(name, ComponentStats()).merge(part)
            confusion = sum(g[1] for g in gathered)
            has_sem_seg = any(g[2] for g in gathered)

        per_score: Dict[str, Dict[str, float]] = OrderedDict()
        for name, result in pixel.items():
            values = dict(result.metrics)
            if self.with_components:
                threshold = thresholds[name]
                values["component_threshold"] = float("nan") if threshold is None else threshold
                values.update(component_stats[name].metrics())
            per_score[name] = values

        results = OrderedDict()
        for name, values in per_score.items():
            prefix = "" if name == PRIMARY_SCORE or len(per_score) == 1 else f"{name}/"
            for key, value in values.items():
                results[prefix + key] = 100.0 * value if key in _PERCENT_KEYS else value
        if unknown_iou is not None:
            results[_UNKNOWN_IOU_KEY] = unknown_iou
        if has_sem_seg:
            results.update(self._miou(confusion))
        self._log_table(per_score, results.get("mIoU"))
        self._write_outputs({name: result.curves for name, result in pixel.items() if result.curves is not None},
                            per_score, results)
        self.reset()
        return OrderedDict({self.dataset_name: results})

    def _log_table(self, per_score: Dict[str, Dict[str, float]], miou: Optional[float]) -> None:
        # One row per score, readable in the log (Detectron2's CSV line runs all scores together).
        metrics = [k for k in _TABLE_KEYS if any(k in values for values in per_score.values())]
        rows = [[name] + [100.0 * values[k] if k in _PERCENT_KEYS else values[k] for k in metrics]
                for name, values in per_score.items()]
        table = markdown_table(["score"] + metrics, rows)
        closed = "" if miou is None else f"; closed-set mIoU {miou:.2f}"
        self._logger.info("OOD results on %s (percent, protocol %s%s):\n%s", self.dataset_name, self.protocol,
                          closed, table)

    def _miou(self, confusion: np.ndarray) -> Dict[str, float]:
        """mIoU as Detectron2's SemSegEvaluator computes it (:func:`mean_iou`) and the IoU of each
        class that occurs in the ground truth."""
        iou = per_class_iou(confusion)
        out = {"mIoU": mean_iou(confusion)}
        for name, value, has in zip(self.stuff_classes, iou, confusion.sum(axis=1) > 0):
            if has:
                out[f"IoU-{name}"] = 100.0 * float(value)
        return out

    def _write_outputs(self, curves, per_score, results) -> None:
        if not self.output_dir:
            return
        os.makedirs(self.output_dir, exist_ok=True)
        base = os.path.join(self.output_dir, f"ood_{self.dataset_name}")
        if self.write_curves:
            write_curves(curves, per_score, base)
        # Written to a temporary name first so a crash never leaves half a JSON behind.
        payload = {"dataset": self.dataset_name, "protocol": self.protocol,
                   "component_sizes": list(self.component_sizes),
                   "results": copy.deepcopy(dict(results))}
        with atomic_open(base + ".json", "w") as f:
            json.dump(payload, f, indent=2)
        self._logger.info("OOD results of %s written to %s.json", self.dataset_name, base)
