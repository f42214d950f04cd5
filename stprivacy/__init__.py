"""STPrivacy (ICCV 2023): video-level privacy-preserving action recognition by dropping and
anonymizing tubelets with a token-pruning video transformer, built on ``stpriv_ops``."""
from .model import FrameClassifier, STPrivacy, STPrivacyConfig, STPrivacyOutput, VideoClassifier, reference_ops

__all__ = ["FrameClassifier", "STPrivacy", "STPrivacyConfig", "STPrivacyOutput", "VideoClassifier", "evaluate_transform",
           "reference_ops"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Imported on first use: the evaluation pulls in the training code, which `import stprivacy` need not.
    if name == "evaluate_transform":
        from .attack import evaluate_transform

        return evaluate_transform
    raise AttributeError(f"module 'stprivacy' has no attribute {name!r}")
