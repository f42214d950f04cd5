"""The three training phases of paper §3.4, their configuration, checkpoints and data factory."""
from .anonymizer import train_adversarial, train_initialization, train_reconstruction
from .checkpoint import CheckpointError, UnsafeCheckpointError, load_checkpoint, load_latest, save_checkpoint
from .config import TrainConfig, get_lr
from .data_factory import DATASETS, build_dataset
from .evaluation import baseline_transform, evaluate_anonymizer, stprivacy_transform
from .loop import NonFiniteLossError
from .protocol import dataset_sizes, evaluate_baseline, evaluate_stprivacy, train_anonymizer

__all__ = [
    "CheckpointError",
    "DATASETS",
    "NonFiniteLossError",
    "TrainConfig",
    "baseline_transform",
    "build_dataset",
    "dataset_sizes",
    "evaluate_anonymizer",
    "evaluate_baseline",
    "evaluate_stprivacy",
    "get_lr",
    "load_checkpoint",
    "load_latest",
    "save_checkpoint",
    "stprivacy_transform",
    "train_adversarial",
    "train_anonymizer",
    "train_initialization",
    "train_reconstruction",
    "UnsafeCheckpointError",
]
