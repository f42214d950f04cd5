"""STPrivacy (ICCV 2023): video-level privacy-preserving action recognition by dropping and
anonymizing tubelets with a token-pruning video transformer, built on ``stpriv_ops``."""
from .model import FrameClassifier, STPrivacy, STPrivacyConfig, STPrivacyOutput, VideoClassifier, reference_ops

__all__ = ["FrameClassifier", "STPrivacy", "STPrivacyConfig", "STPrivacyOutput", "VideoClassifier", "reference_ops"]
__version__ = "0.1.0"
