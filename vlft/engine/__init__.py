"""Training: the loop on DeepSpeed (or plain torch on one process), checkpoints and resume, progress and logs."""
from vlft.engine.train import TrainingInterrupted, TrainResult, train, train_from_config

__all__ = ["TrainResult", "TrainingInterrupted", "train", "train_from_config"]
