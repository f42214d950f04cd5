"""How every method is judged: the paper's attack protocol, the same for every row of a table.

* :mod:`~stprivacy.attack.evaluate`: a method (:class:`Method`: a frozen anonymizer and its splits)
  faces fresh attackers trained on its transformed training videos and tested on its test videos
  (:func:`evaluate_methods`, :func:`evaluate_transform` for any callable);
* :mod:`~stprivacy.attack.protocols`: the video and frame attackers on video files;
* :mod:`~stprivacy.attack.metrics`: top-1, class-wise F1, cMAP and per-attribute AP;
* :mod:`~stprivacy.attack.verdict`: one row from several attackers, and the demo's target;
* :mod:`~stprivacy.attack.report`, :mod:`~stprivacy.attack.viz`: evaluation.json/md and the plots;
* :mod:`~stprivacy.attack.seed_table`: the demo over seeds as one table, every seed and the spread.

The anonymizers themselves are in :mod:`stprivacy.methods`.
"""
from __future__ import annotations

_EVALUATE = ("Method", "attacker_names", "baseline_method", "build_splits", "checked_transform", "evaluate_methods",
             "evaluate_transform", "folder_method", "stprivacy_method", "summarize_attackers", "transform_method")
__all__ = list(_EVALUATE)


def __getattr__(name: str):
    # Imported on first use: evaluate pulls in the training code, and the training code imports
    # metrics from this package, which must not import evaluate back while it loads.
    if name in _EVALUATE:
        from . import evaluate

        return getattr(evaluate, name)
    raise AttributeError(f"module 'stprivacy.attack' has no attribute {name!r}")
