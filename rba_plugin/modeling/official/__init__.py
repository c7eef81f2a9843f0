"""Re-implementations of the official PEBAL, RPL(+CoroCL), DenseHybrid and RAML networks with the
official state-dict keys, built from the registered Detectron2 parts
(``build_wider_resnet_backbone``, ``build_torchvision_resnet_backbone``, ``DeepWV3PlusHead``,
``RAMLDeepLabV3PlusHead``). Importing this package registers those parts."""
from .densehybrid import DenseHybridOODHead, ImageNormalizer
from .keys import (
    OFFICIAL_LAYOUTS,
    OfficialLayout,
    model_to_official_state_dict,
    official_to_model_state_dict,
    split_official_state_dict,
)
from .networks import (
    OFFICIAL_NETWORKS,
    DenseHybridNetwork,
    OfficialNetwork,
    PEBALNetwork,
    RAMLNetwork,
    RPLNetwork,
    build_official_network,
    official_network_config,
)
from .rpl import ProjectionHead, ResidualAnomalyBlock
from .scores import densehybrid_official_score, energy_official_score

__all__ = [
    "DenseHybridOODHead",
    "ImageNormalizer",
    "OFFICIAL_LAYOUTS",
    "OfficialLayout",
    "model_to_official_state_dict",
    "official_to_model_state_dict",
    "split_official_state_dict",
    "OFFICIAL_NETWORKS",
    "DenseHybridNetwork",
    "OfficialNetwork",
    "PEBALNetwork",
    "RAMLNetwork",
    "RPLNetwork",
    "build_official_network",
    "official_network_config",
    "ProjectionHead",
    "ResidualAnomalyBlock",
    "densehybrid_official_score",
    "energy_official_score",
]
