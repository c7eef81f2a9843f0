from .optimizer import build_maskformer_optimizer, maskformer_param_groups
from .trainer import MaskFormerTrainer, build_evaluator, unsupported_training_options

__all__ = ["build_maskformer_optimizer", "maskformer_param_groups", "MaskFormerTrainer", "build_evaluator", "unsupported_training_options"]
