#!/usr/bin/env python3
"""Builds the COCO outlier pool for outlier pasting from a COCO instances JSON.

Keeps the images that contain no instance of a class overlapping Cityscapes (by default person,
bicycle, car, motorcycle, bus, truck, traffic light, stop sign) and whose sides are both at least
480 pixels, and writes one PNG mask per kept image with every annotated instance pixel set to 254
(0 elsewhere):

    python tools/prepare_coco_outliers.py \
        --annotations $DETECTRON2_DATASETS/coco/annotations/instances_train2017.json \
        --output $DETECTRON2_DATASETS/coco/annotations/ood_seg_train2017

The masks are named <image id:012d>.png like COCO's train2017 images, which is the layout the
``coco_outliers`` pool reads (``INPUT.OUTLIER_POOL``). Masks are written to a temporary folder
that replaces the output folder only when every mask was written.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from typing import List, Sequence

import cv2
import numpy as np
from pycocotools.coco import COCO

DEFAULT_EXCLUDED = ("person", "bicycle", "car", "motorcycle", "bus", "truck", "traffic light", "stop sign")


def select_outlier_images(coco: COCO, excluded: Sequence[str], min_side: int) -> List[int]:
    """Ids of images with at least one instance, none of an excluded class, both sides >= min_side."""
    name_to_id = {c["name"]: c["id"] for c in coco.loadCats(coco.getCatIds())}
    unknown = [n for n in excluded if n not in name_to_id]
    if unknown:
        raise ValueError(f"excluded classes {unknown} are not categories of this COCO file "
                         f"(has {sorted(name_to_id)[:10]}...)")
    excluded_ids = {name_to_id[n] for n in excluded}
    kept = []
    for image_id in sorted(coco.getImgIds()):
        info = coco.imgs[image_id]
        if min(info["height"], info["width"]) < min_side:
            continue
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=None))
        if not annotations or any(a["category_id"] in excluded_ids for a in annotations):
            continue
        kept.append(image_id)
    return kept


def outlier_mask(coco: COCO, image_id: int, ood_label: int = 254) -> np.ndarray:
    """H x W uint8 mask with ``ood_label`` on every instance pixel of the image."""
    info = coco.imgs[image_id]
    mask = np.zeros((info["height"], info["width"]), np.uint8)
    for annotation in coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=None)):
        mask[coco.annToMask(annotation) > 0] = ood_label
    return mask


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotations", required=True, help="COCO instances JSON")
    parser.add_argument("--output", required=True, help="folder for the <id:012d>.png masks")
    parser.add_argument("--exclude", nargs="*", default=list(DEFAULT_EXCLUDED),
                        help="category names whose presence drops an image")
    parser.add_argument("--min-side", type=int, default=480)
    parser.add_argument("--ood-label", type=int, default=254)
    args = parser.parse_args(argv)

    coco = COCO(args.annotations)
    kept = select_outlier_images(coco, args.exclude, args.min_side)
    output = os.path.abspath(args.output)
    os.makedirs(os.path.dirname(output), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(output) + ".tmp-", dir=os.path.dirname(output))
    try:
        for image_id in kept:
            path = os.path.join(tmp, f"{image_id:012d}.png")
            if not cv2.imwrite(path, outlier_mask(coco, image_id, args.ood_label)):
                raise OSError(f"could not write {path}")
        if os.path.exists(output):
            shutil.rmtree(output)
        os.rename(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"kept {len(kept)} of {len(coco.getImgIds())} images; masks in {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
