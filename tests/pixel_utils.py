"""Tiny per-pixel models and batches for the tests (CPU, seconds)."""
from __future__ import annotations


import torch

from rba_plugin.config import get_cfg


def tiny_pixel_cfg(method: str = "ClosedSet", num_classes: int = 4):
    cfg = get_cfg()
    cfg.merge_from_file("configs/cityscapes/pixel/d2_deeplab/Base-DeepLabV3Plus-R101.yaml")
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"
    r = cfg.MODEL.RESNETS
    r.DEPTH = 50
    r.NORM = "BN"
    r.STEM_OUT_CHANNELS = 8
    r.RES2_OUT_CHANNELS = 16
    r.WIDTH_PER_GROUP = 4
    h = cfg.MODEL.SEM_SEG_HEAD
    h.NORM = "BN"
    h.NUM_CLASSES = num_classes
    h.ASPP_CHANNELS = 16
    h.CONVS_DIM = 16
    h.PROJECT_CHANNELS = [8]
    h.LOSS_TYPE = "cross_entropy"
    cfg.INPUT.CROP.ENABLED = False
    cfg.MODEL.PIXEL_OOD.METHOD = method
    cfg.MODEL.RPL.PROJ_DIM = 8
    cfg.MODEL.RPL.COROCL_MAX_VIEWS = 16
    cfg.MODEL.RAML.EMBED_DIMS = [16, 8]
    cfg.MODEL.VCA.EMBED_DIM = 8
    cfg.MODEL.VCA.SUPCON_PROJ_DIM = 8
    return cfg


def tiny_batch(n: int = 2, h: int = 64, w: int = 64, num_classes: int = 4, with_outliers: bool = True, seed: int = 0,
               raw_outliers: bool = False):
    """``n`` random images with labels (void top rows, a pasted 254 box with ``with_outliers``);
    ``raw_outliers`` adds CoroCL's "outlier_image" / "outlier_sem_seg" (254 box on background 0)."""
    g = torch.Generator().manual_seed(seed)
    raw_g = torch.Generator().manual_seed(10_000 + seed)  # its own stream: the images stay the same
    batch = []
    for i in range(n):
        image = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
        sem = torch.randint(0, num_classes, (h, w), generator=g)
        sem[:4] = 255
        if with_outliers:
            sem[20:36, 20 + 4 * i : 40 + 4 * i] = 254
        item = {"image": image, "sem_seg": sem, "height": h, "width": w}
        if raw_outliers:
            item["outlier_image"] = torch.randint(0, 256, (3, h, w), generator=raw_g, dtype=torch.uint8)
            raw_sem = torch.zeros(h, w, dtype=torch.long)
            raw_sem[h // 4: h // 2, w // 4: w // 2 + 4 * i] = 254
            item["outlier_sem_seg"] = raw_sem
        batch.append(item)
    return batch


def state_snapshot(model):
    """Every parameter and buffer, cloned."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train_steps(model, batches, steps: int = 3, lr: float = 1e-2):
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
    for step in range(steps):
        losses = model(batches[step % len(batches)])
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        opt.step()
    return losses
