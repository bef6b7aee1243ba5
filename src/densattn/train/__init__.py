"""Training: the one loop (:mod:`~densattn.train.loop`), the one fold runner (:mod:`~densattn.train.runner`), run
directories (:mod:`~densattn.train.rundir`), and the methods that plug into the runner: heads and fusion heads on
cached features (:mod:`~densattn.train.methods`), encoders tuned end to end (:mod:`~densattn.train.end_to_end`)."""

from densattn.train.config import TrainConfig
from densattn.train.inputs import Inputs
from densattn.train.loop import NonFiniteLossError, TrainResult, predict_logits, train_model
from densattn.train.methods import FusionMethod, HeadMethod, run_experiment, run_fusion_experiment
from densattn.train.metrics import classification_metrics, focal_loss
from densattn.train.rundir import RunDirectory, RunLockedError
from densattn.train.runner import Fold, Method, make_folds, run_folds

__all__ = [
    "Fold",
    "FusionMethod",
    "HeadMethod",
    "Inputs",
    "Method",
    "NonFiniteLossError",
    "RunDirectory",
    "RunLockedError",
    "TrainConfig",
    "TrainResult",
    "classification_metrics",
    "focal_loss",
    "make_folds",
    "predict_logits",
    "run_experiment",
    "run_folds",
    "run_fusion_experiment",
    "train_model",
]
