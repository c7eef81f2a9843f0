from .checkpoint import CheckpointMismatchError, CheckpointReadError, SafeCheckpointer, newly_initialized_prefixes
from .evaluation import evaluate_with_progress
from .finetune import apply_finetune_freezing, finetune_trainable_prefixes
from .finite_loss import FiniteLossAMPTrainer, FiniteLossSimpleTrainer, NonFiniteLossError, check_finite_losses
from .optimizer import build_maskformer_optimizer, maskformer_param_groups
from .trainer import MaskFormerTrainer, build_evaluator, unsupported_training_options

__all__ = [
    "evaluate_with_progress",
    "apply_finetune_freezing",
    "finetune_trainable_prefixes",
    "build_maskformer_optimizer",
    "maskformer_param_groups",
    "MaskFormerTrainer",
    "build_evaluator",
    "unsupported_training_options",
    "SafeCheckpointer",
    "CheckpointReadError",
    "CheckpointMismatchError",
    "newly_initialized_prefixes",
    "NonFiniteLossError",
    "check_finite_losses",
    "FiniteLossSimpleTrainer",
    "FiniteLossAMPTrainer",
]
