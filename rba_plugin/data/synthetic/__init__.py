"""The built-in synthetic benchmark: seeded street scenes, anomalies and an outlier pool on disk."""
from .register import SYNTHCITY_COMPONENT_SIZES, register_synthcity
from .samples import make_anomaly_sample, make_inlier_sample, make_outlier_sample
from .writer import GENERATOR_VERSION, SynthCityParams, ensure_synthcity, is_up_to_date

__all__ = [
    "register_synthcity",
    "ensure_synthcity",
    "is_up_to_date",
    "SynthCityParams",
    "GENERATOR_VERSION",
    "SYNTHCITY_COMPONENT_SIZES",
    "make_inlier_sample",
    "make_anomaly_sample",
    "make_outlier_sample",
]
