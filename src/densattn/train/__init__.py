"""Training of heads on cached features: loop, metrics, splits, run directories."""

from densattn.train.loop import TrainConfig, train_model
from densattn.train.metrics import classification_metrics, focal_loss
from densattn.train.run import run_experiment

__all__ = ["TrainConfig", "classification_metrics", "focal_loss", "run_experiment", "train_model"]
