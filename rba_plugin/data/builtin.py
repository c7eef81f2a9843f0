"""Registers every built-in dataset on import (lazily: no file is touched until first use).

* public anomaly benchmarks (see builtin_anomaly.py) under $DETECTRON2_DATASETS,
* ``coco_outliers``: the prepared COCO outlier pool under $DETECTRON2_DATASETS/coco,
* ``synthcity_{train,val,anomaly,outliers}``: the synthetic benchmark under
  $DETECTRON2_DATASETS/synthcity, generated on first use;
* ``synthcity_seed1_anomaly``: a second anomaly split of the same size drawn with generator seed 1
  (under $DETECTRON2_DATASETS/synthcity_seed1), so a change tuned on ``synthcity_anomaly`` can be
  checked on anomalies it was not chosen on.
"""
from detectron2.data import DatasetCatalog

from .builtin_anomaly import register_all_anomaly_benchmarks
from .outlier_pool import coco_outlier_pool_paths, register_outlier_pool
from .synthetic import SynthCityParams, register_synthcity
from .anomaly_datasets import DatasetPath


def register_all() -> None:
    registered = set(DatasetCatalog.list())
    register_all_anomaly_benchmarks()
    if "coco_outliers" not in registered:
        image_root, mask_root = coco_outlier_pool_paths("coco")
        register_outlier_pool("coco_outliers", image_root, mask_root, image_suffix=".jpg")
    if "synthcity_train" not in registered:
        register_synthcity()
    if "synthcity_seed1_anomaly" not in registered:
        only_anomaly = SynthCityParams(num_train=0, num_val=0, num_outliers=0, seed=1)
        register_synthcity(DatasetPath("synthcity_seed1"), only_anomaly, prefix="synthcity_seed1", splits=("anomaly",))


register_all()
