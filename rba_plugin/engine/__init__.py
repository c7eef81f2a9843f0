from .evaluation import evaluate_with_progress
from .finetune import apply_finetune_freezing, finetune_trainable_prefixes
from .optimizer import build_maskformer_optimizer, maskformer_param_groups
from .trainer import MaskFormerTrainer, build_evaluator, unsupported_training_options

__all__ = ["evaluate_with_progress", "apply_finetune_freezing", "finetune_trainable_prefixes", "build_maskformer_optimizer", "maskformer_param_groups", "MaskFormerTrainer", "build_evaluator", "unsupported_training_options"]
