"""Datasets: the embedded synthetic benchmark (and real-data loaders beside it)."""
from .synthetic import PRIVACY_ATTRIBUTES, SyntheticSpec, SyntheticVideos, make_video, materialize

__all__ = ["PRIVACY_ATTRIBUTES", "SyntheticSpec", "SyntheticVideos", "make_video", "materialize"]
