"""Detectron2's trainer for every model of the plugin (Mask2Former's ``train_net.Trainer``,
packaged): the optimizer, LR schedule, training mapper and evaluators come from the config, and
whatever depends on the model (what trains, learning-rate factors, extra training inputs) is
asked of the model itself."""
from __future__ import annotations

import itertools
import logging
import os
import weakref
from typing import Callable, Iterable, Optional

import torch
from detectron2.data import MetadataCatalog, build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer, HookBase, create_ddp_model
from detectron2.engine.train_loop import TrainerBase
from detectron2.evaluation import DatasetEvaluator, SemSegEvaluator
from detectron2.projects.deeplab import build_lr_scheduler as build_deeplab_lr_scheduler
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import check_config
from ..data.dataset_mappers import build_test_mapper, build_train_mapper
from ..data.image_io import read_label
from .checkpoint import SafeCheckpointer
from .finite_loss import FiniteLossAMPTrainer, FiniteLossSimpleTrainer
from .optimizer import build_optimizer

__all__ = ["Trainer", "DataInitHook", "build_evaluator"]

logger = logging.getLogger(__name__)


def build_evaluator(cfg, dataset_name: str, output_folder: Optional[str] = None) -> DatasetEvaluator:
    """The evaluator named by the dataset's metadata ``evaluator_type``:

    * "sem_seg" and "cityscapes_sem_seg" (detectron2's Cityscapes trainId sets): mIoU with
      detectron2's ``SemSegEvaluator`` (the Cityscapes scripts are not needed), reading labels
      with the plugin's label reader (indices, as training reads them);
    * "ood": ``rba_plugin.evaluation.OODEvaluator`` (anomaly metrics).
    """
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    if evaluator_type in ("sem_seg", "cityscapes_sem_seg"):
        return SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder,
                               sem_seg_loading_fn=read_label_array)
    if evaluator_type == "ood":
        from ..evaluation import OODEvaluator  # imported lazily: only OOD datasets need it

        # With the config: TEST.OOD (protocol, score keys, component settings) applies here too.
        return OODEvaluator(cfg, dataset_name, output_dir=output_folder, distributed=True)
    raise NotImplementedError(
        f"no evaluator for dataset '{dataset_name}' with evaluator_type '{evaluator_type}' "
        "(supported: sem_seg, cityscapes_sem_seg, ood)"
    )


def read_label_array(path: str, copy: bool = False, dtype=None):
    """``SemSegEvaluator``'s ``sem_seg_loading_fn``: :func:`rba_plugin.data.image_io.read_label`
    (Detectron2's default reads the file with whatever mode it has)."""
    label = read_label(path)
    return label if dtype is None else label.astype(dtype)


class DataInitHook(HookBase):
    """Before training starts: if the model asks for ``data_init_batches() > 0`` training batches,
    hands that many batches of a separate training loader (the training stream is left as it is)
    to ``model.initialize_from_data``. Models without these methods are left alone; a model
    decides itself whether it still needs the data (VCA does not once its prototypes were loaded
    from a checkpoint, e.g. when resuming)."""

    def __init__(self, build_train_loader: Callable[..., Iterable]):
        self._build_train_loader = build_train_loader

    def before_train(self):
        model = getattr(self.trainer.model, "module", self.trainer.model)  # DDP-wrapped
        wanted = model.data_init_batches() if callable(getattr(model, "data_init_batches", None)) else 0
        if wanted <= 0:
            return
        cfg = self.trainer.cfg
        loader = self._build_train_loader(cfg, extra_inputs=getattr(model, "extra_training_inputs", ()))
        logger.info("Initialising %s from %d training batches before the first step", type(model).__name__, wanted)
        model.initialize_from_data(itertools.islice(iter(loader), wanted))


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` with the plugin's optimizer, poly LR, training mappers and evaluators.

    Runs on the device of ``cfg.MODEL.DEVICE``; on CPU, DDP gets no device ids (gloo) and AMP,
    which detectron2 only supports on CUDA, is turned off with a warning. Checkpoints go through
    :class:`SafeCheckpointer` (atomic saves, strict loading unless MODEL.ALLOW_PARTIAL_LOAD) and a
    non-finite loss term stops training with an error naming the term and the iteration.
    """

    def __init__(self, cfg):
        check_config(cfg)  # every declared key (TEST.AUG.ENABLED, list lengths, enums), before any data is read
        # DefaultTrainer.__init__ with the two CPU adjustments above.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        # A model may need extra training inputs (e.g. RPL's raw outlier images for CoroCL).
        data_loader = self.build_train_loader(cfg, extra_inputs=getattr(model, "extra_training_inputs", ()))
        on_cuda = torch.device(cfg.MODEL.DEVICE).type == "cuda"
        model = create_ddp_model(
            model, broadcast_buffers=False, device_ids=[comm.get_local_rank()] if on_cuda else None
        )
        use_amp = cfg.SOLVER.AMP.ENABLED and on_cuda
        if cfg.SOLVER.AMP.ENABLED and not on_cuda:
            logger.warning("SOLVER.AMP.ENABLED is ignored: mixed precision training needs CUDA (MODEL.DEVICE=%s)", cfg.MODEL.DEVICE)
        self._trainer = (FiniteLossAMPTrainer if use_amp else FiniteLossSimpleTrainer)(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = SafeCheckpointer(cfg, model, owns_save_dir=True, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def build_hooks(self):
        # First: a model that initialises parameters from training data does so before anything
        # else sees it (e.g. VCA's class-mean prototypes).
        return [DataInitHook(self.build_train_loader)] + super().build_hooks()

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        # The plugin's test mapper: images read as training and tools/demo.py read them.
        return build_detection_test_loader(cfg, dataset_name, mapper=build_test_mapper(cfg))

    @classmethod
    def build_train_loader(cls, cfg, extra_inputs=()):
        return build_detection_train_loader(cfg, mapper=build_train_mapper(cfg, extra_inputs=extra_inputs))

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        # Handles "WarmupPolyLR" and falls back to detectron2's schedulers for the other names.
        return build_deeplab_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)
