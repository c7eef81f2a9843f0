"""Training and inference machinery shared by every model: the trainer, the optimizer builder,
safe checkpoints, the finite-loss check, evaluation with a progress bar and the predictor."""
from .defaults import setup
from .checkpoint import CheckpointMismatchError, CheckpointReadError, SafeCheckpointer, newly_initialized_prefixes
from .evaluation import evaluate_with_progress
from .launch import launch
from .finite_loss import FiniteLossAMPTrainer, FiniteLossSimpleTrainer, NonFiniteLossError, check_finite_losses
from .optimizer import build_optimizer, optimizer_param_groups
from .trainer import Trainer, build_evaluator

__all__ = [
    "setup",
    "launch",
    "evaluate_with_progress",
    "build_optimizer",
    "optimizer_param_groups",
    "Trainer",
    "build_evaluator",
    "SafeCheckpointer",
    "CheckpointReadError",
    "CheckpointMismatchError",
    "newly_initialized_prefixes",
    "NonFiniteLossError",
    "check_finite_losses",
    "FiniteLossSimpleTrainer",
    "FiniteLossAMPTrainer",
]
