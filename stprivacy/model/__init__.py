"""The STPrivacy model (tokenizer, sparsification and anonymization blocks) and its recognizers."""
from .config import STPrivacyConfig
from .network import STPrivacy, STPrivacyOutput
from .ops import attention_backend, reference_ops
from .recognizers import FrameClassifier, VideoClassifier

__all__ = ["FrameClassifier", "STPrivacy", "STPrivacyConfig", "STPrivacyOutput", "VideoClassifier", "attention_backend",
           "reference_ops"]
