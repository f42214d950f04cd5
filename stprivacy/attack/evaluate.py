"""Evaluate any anonymizer by the paper's attack protocol, next to the built-in baselines, in one table.

A *method* is a frozen transform and the two splits it is evaluated on (:class:`Method`):

* a built-in baseline (:mod:`stprivacy.methods.baselines`) or a trained STPrivacy at a keep ratio;
* any callable ``Tensor[B, 3, T, H, W] -> Tensor[B, 3, T, H, W]``, e.g. a torch module of someone
  else's method (:func:`transform_method`, :func:`evaluate_transform`);
* a folder of a method's anonymized videos (``stprivacy evaluate --transformed-root``), read as
  the dataset itself (:mod:`stprivacy.data.transformed`) with the identity as its transform.

Every method faces every *attacker* asked for: fresh recognizers trained on the method's
transformed training videos, tested on its transformed test videos.

* ``"video"``: the video-level ViTs trained from scratch, the paper's protocol (Table 1): an
  action and a privacy recognizer (top-1, class-wise F1, cMAP, per-attribute AP). For STPrivacy
  they come as pixel-only and mask-aware recognizers, combined by :mod:`stprivacy.attack.verdict`.
* ``"frame"``: a 2D ViT privacy recognizer on single frames (Table 3); its numbers per frame and,
  with the frame logits averaged, per video.
* ``"video_imagenet"`` / ``"frame_imagenet"``: the same, initialized from a local ImageNet ViT-S
  file (``imagenet_vit``), a stronger attacker (its heads stay random).

The loops are the existing ones: :func:`stprivacy.train.evaluation.evaluate_anonymizer` for the
video attackers on a dataset held in memory (the synthetic benchmark), :mod:`stprivacy.attack.protocols`
for video files and for the frame attackers. Every (method, attacker) run starts from
``torch.manual_seed(cfg.seed + 1)`` and shuffles with generators seeded by ``cfg.seed``, so a row
does not depend on the rows before it: a byte copy of the dataset, or the identity transform,
reproduces the raw baseline's numbers exactly.

A row (``evaluation["rows"][name]``) keeps every attacker's result under ``"attackers"`` and
sums them up as the verdict module does: privacy (``cmap``, ``f1``, ``ap``, all per video) from
the attacker that recovers more on the validation split carved from the training videos (higher
validation cMAP: ``privacy_from``), ``top1`` from the video action recognizer that does better
there (``top1_from``); the reported numbers are those attackers' test numbers. A multi-label
action task reports ``action_cmap`` / ``action_f1`` / ``action_ap`` instead of top-1 (``top1`` is
None) and chooses its action recognizer by validation action cMAP. :mod:`stprivacy.attack.report`
writes the table and the plot.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..data.transformed import transformed_folder
from ..errors import InputNotFoundError, UsageError
from ..methods.baselines import BASELINE_REGIONS, make_baseline
from ..model import FrameClassifier, STPrivacy, STPrivacyConfig
from ..model.pretrained import is_timm_source, load_pretrained_vit, load_vit_source
from ..train.common import make_recognizer
from ..train.config import TrainConfig
from ..train.distributed import world_size
from ..train.evaluation import Anonymizer, baseline_transform, evaluate_anonymizer, stprivacy_transform
from ..train.protocol import dataset_sizes
from .protocols import _frame_overrides, run_protocol
from .report import write_evaluation
from .seed_table import git_commit, machine
from .metrics import task_score
from .verdict import ACTION_KEYS, ATTACKER_PROTOCOL, ATTACKERS, selection_rule


@dataclass
class Method:
    """One row of the table: a frozen transform, the splits it runs on, and facts for the report.

    Attributes:
        sees: what the video attacker gets (``stprivacy.attack.verdict.ATTACKERS``): ``("pixels",)`` for
            transforms that drop nothing, both for STPrivacy (its keep mask too).
        info: JSON facts copied into the row (``root`` and ``left_out`` of a folder, ``alpha``).
    """

    name: str
    transform: Anonymizer
    train_set: Dataset
    test_set: Dataset
    kind: str  # "baseline", "stprivacy", "transform" or "transformed_root"
    sees: tuple[str, ...] = ("pixels",)
    info: dict[str, Any] = field(default_factory=dict)


def checked_transform(fn: Callable[[Tensor], Tensor], argument: str = "transform") -> Anonymizer:
    """``fn`` as an :data:`Anonymizer` that refuses an output not shaped like its input (a
    :class:`~stprivacy.errors.UsageError` naming ``argument``). A torch module is put in eval mode."""
    if isinstance(fn, nn.Module):
        fn.eval()
    if not callable(fn):
        raise UsageError(f"{argument} must be a callable Tensor[B, 3, T, H, W] -> Tensor[B, 3, T, H, W], "
                         f"got {type(fn).__name__}")

    def transform(video: Tensor) -> tuple[Tensor, None]:
        out = fn(video)
        if (not isinstance(out, Tensor) or out.shape != video.shape or not out.is_floating_point()
                or out.device != video.device):
            got = (f"{out.dtype} {tuple(out.shape)} on {out.device}" if isinstance(out, Tensor)
                   else type(out).__name__)
            raise UsageError(f"{argument} must return a float Tensor[B, 3, T, H, W] shaped like its input "
                             f"({tuple(video.shape)} on {video.device}), got {got}")
        return out, None

    return transform


def transform_method(name: str, fn: Callable[[Tensor], Tensor], train_set: Dataset, test_set: Dataset) -> Method:
    """Someone else's method as a callable on batches of clips."""
    return Method(name, checked_transform(fn), train_set, test_set, "transform")


def baseline_method(name: str, model_cfg: STPrivacyConfig, train_set: Dataset, test_set: Dataset) -> Method:
    """One of ``stprivacy.methods.baselines.ALL_BASELINES``; its row says what part of the frame it
    changes (``"region"``: whole frame, person region, ...)."""
    return Method(name, baseline_transform(make_baseline(name, model_cfg.image_size)), train_set, test_set, "baseline",
                  info={"region": BASELINE_REGIONS[name]})


def stprivacy_method(model: STPrivacy, keep_ratio: float, train_set: Dataset, test_set: Dataset) -> Method:
    """A trained STPrivacy at a deployment keep ratio, attacked with and without its keep mask."""
    return Method(f"STPrivacy (alpha={keep_ratio:g})", stprivacy_transform(model, keep_ratio), train_set, test_set,
                  "stprivacy", sees=ATTACKERS, info={"alpha": keep_ratio})


def folder_method(name: str, root: str | Path, train_set: Dataset, test_set: Dataset, video_root: str | Path, *,
                  on_missing: str = "exclude", progress: bool = False) -> Method:
    """A folder of a method's anonymized videos mirroring ``video_root`` (see
    :mod:`stprivacy.data.transformed`); the videos it lacks are named in ``info["left_out"]``."""
    train, train_out = transformed_folder(train_set, root, video_root, on_missing=on_missing, progress=progress)
    test, test_out = transformed_folder(test_set, root, video_root, on_missing=on_missing, progress=progress)
    left_out = {"train": train_out.to_dict(), "test": test_out.to_dict(), "count": len(train_out) + len(test_out)}
    return Method(name, baseline_transform(lambda video: video), train, test, "transformed_root",
                  info={"root": str(root), "left_out": left_out})


def attacker_names(protocols: Iterable[str], imagenet: bool) -> tuple[str, ...]:
    """The attackers of ``protocols`` ("video", "frame"), each also ImageNet-initialized when
    ``imagenet``."""
    protocols = list(dict.fromkeys(protocols))
    return tuple(protocols + ([f"{p}_imagenet" for p in protocols] if imagenet else []))


def _check_attackers(attackers: Sequence[str], imagenet_vit: str | Path | None) -> tuple[str, ...]:
    attackers = tuple(dict.fromkeys(attackers))
    unknown = [a for a in attackers if a not in ATTACKER_PROTOCOL]
    if not attackers or unknown:
        raise UsageError(f"attackers must be a non-empty subset of {tuple(ATTACKER_PROTOCOL)}, got {attackers}")
    if imagenet_vit is None and any(a.endswith("_imagenet") for a in attackers):
        raise UsageError("the *_imagenet attackers need imagenet_vit (--imagenet-vit FILE or timm:NAME), an ImageNet ViT")
    return attackers


def load_attacker_init(path: str | Path, model_cfg: STPrivacyConfig, cfg: TrainConfig, num_outputs: int
                       ) -> tuple[dict[str, Tensor], dict[str, int]]:
    """The ImageNet ViT state dict of ``path`` (a local file, or ``"timm:NAME"`` through timm),
    checked now against both recognizer kinds (so a wrong file fails before any training). Returns
    it and how many parameters each kind loads."""
    if not is_timm_source(path) and not Path(path).is_file():
        raise InputNotFoundError(f"--imagenet-vit: no such file {path} (expected a local timm / DeiT ViT checkpoint, "
                                 "or timm:NAME)")
    try:
        state = load_vit_source(path)
        video = make_recognizer(model_cfg, cfg, num_outputs, multilabel=True).classifier
        frame = FrameClassifier.from_config(model_cfg, num_outputs, multilabel=True, **_frame_overrides(cfg))
        loaded = {kind: len(load_pretrained_vit(model, state).loaded) for kind, model in
                  (("video", video), ("frame", frame))}
    except ValueError as e:  # not a ViT state dict, or one that does not fit the recognizers' sizes
        raise UsageError(f"--imagenet-vit {path}: {e}") from e
    return state, loaded


def _attack(method: Method, attacker: str, model_cfg: STPrivacyConfig, cfg: TrainConfig, num_classes: int,
            num_attributes: int, init: dict[str, Tensor] | None) -> dict[str, Any]:
    protocol = ATTACKER_PROTOCOL[attacker]
    init = init if attacker.endswith("_imagenet") else None
    name = f"{method.name} [{attacker}]"
    in_memory = protocol == "video" and not hasattr(method.train_set, "collate_fn")
    if not in_memory and getattr(method.transform, "takes_region", False) and hasattr(method.train_set,
                                                                                     "person_region"):
        # Only the in-memory loop hands a baseline the dataset's regions; the streaming ones would
        # let it run its person detector on videos whose region the dataset knows.
        raise UsageError(f"{method.name}: the {attacker!r} attacker does not pass the dataset's person regions to "
                         "the baseline; evaluate it with the 'video' attacker")
    torch.manual_seed(cfg.seed + 1)  # every run starts alike: a row does not depend on the rows before it
    if in_memory:  # held in memory
        return evaluate_anonymizer(method.transform, method.train_set, method.test_set, model_cfg, cfg,
                                   num_classes=num_classes, num_attributes=num_attributes, name=name,
                                   attackers=method.sees, init=init)
    return run_protocol(protocol, method.transform, method.train_set, method.test_set, model_cfg, cfg,
                        num_classes=num_classes, num_attributes=num_attributes, name=name, attackers=method.sees,
                        init=init)


def _video_level_privacy(attacker: str, result: dict[str, Any]) -> tuple[float, float, list[float]]:
    """(cMAP, F1, AP) per video: a frame attacker's with its frame logits averaged per video."""
    if ATTACKER_PROTOCOL[attacker] == "frame":
        return result["video_cmap"], result["video_f1"], result["video_ap"]
    return result["cmap"], result["f1"], result["ap"]


def summarize_attackers(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One row from each attacker's result, chosen on the validation split
    (:data:`stprivacy.attack.verdict.SELECTION_RULE`): privacy from the attacker with the higher
    per-video validation cMAP, the action numbers from the video action recognizer with the higher
    validation task score (top-1, or action cMAP for multi-label actions: ``action_cmap``,
    ``action_f1``, ``action_ap``; None without a video attacker); ties go to the attacker named
    first. The row's numbers are those attackers' test numbers."""
    order = list(results)
    missing = [a for a in order if "validation" not in results[a]]
    if missing:
        raise ValueError(f"attackers {missing} have no validation metrics to be chosen by")
    privacy_from = max(order, key=lambda a: (_video_level_privacy(a, results[a]["validation"])[0], -order.index(a)))
    cmap, f1, ap = _video_level_privacy(privacy_from, results[privacy_from])
    video = [a for a in order if ATTACKER_PROTOCOL[a] == "video"]
    top1_from = (max(video, key=lambda a: (task_score(results[a]["validation"])[1], -order.index(a)))
                 if video else None)
    action = {"top1": None} if top1_from is None else {k: v for k, v in results[top1_from].items() if k in ACTION_KEYS}
    return {**action, "top1_from": top1_from,
            "cmap": cmap, "f1": f1, "ap": ap, "privacy_from": privacy_from, "selection": selection_rule(action),
            "kept": results[video[0]]["kept"] if video else None,
            "skipped": max(int(r.get("skipped", 0)) for r in results.values()), "attackers": results}


def evaluate_methods(methods: Sequence[Method], model_cfg: STPrivacyConfig, cfg: TrainConfig, *,
                     attackers: Sequence[str] = ("video",), imagenet_vit: str | Path | None = None,
                     trained_on: str | None = None, evaluated_on: str | None = None,
                     on_result: Callable[[str, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Every method against every attacker: the content of ``evaluation.json``.

    Args:
        methods: the rows, in table order; all on splits of one dataset.
        attackers: names of :data:`ATTACKER_PROTOCOL`.
        imagenet_vit: the ImageNet ViT of the ``*_imagenet`` attackers: a local file or ``"timm:NAME"``.
        trained_on, evaluated_on: dataset names; they differ in the cross-dataset ("novel
            actions") protocol, where a method trained on one benchmark is evaluated on another.
        on_result: called with each finished row (the command line prints it).
    """
    if not methods:
        raise UsageError("nothing to evaluate: give a checkpoint, a transformed root, a transform or baselines")
    attackers = _check_attackers(attackers, imagenet_vit)
    t0, commit = time.perf_counter(), git_commit()  # the code that runs, read before it runs
    num_classes, num_attributes = dataset_sizes(methods[0].train_set)
    files = hasattr(methods[0].train_set, "collate_fn")  # video files, streamed; else held in memory
    streamed = files or any(ATTACKER_PROTOCOL[a] == "frame" for a in attackers)
    in_memory = not files and any(ATTACKER_PROTOCOL[a] == "video" for a in attackers)
    if world_size() > 1 and streamed and in_memory:
        # The in-memory protocol shards over the processes, the streaming ones run in one: not both.
        raise UsageError("the frame-level attackers run in one process; evaluate them without torchrun")
    init, loaded = None, None
    if imagenet_vit is not None:
        init, loaded = load_attacker_init(imagenet_vit, model_cfg, cfg, max(num_classes, num_attributes))
    rows = {}
    for method in methods:
        results = {a: _attack(method, a, model_cfg, cfg, num_classes, num_attributes, init) for a in attackers}
        videos = {"train": len(method.train_set), "test": len(method.test_set)}  # a folder's may be fewer
        rows[method.name] = {"kind": method.kind, **method.info, "videos": videos, **summarize_attackers(results)}
        if on_result is not None:
            on_result(method.name, rows[method.name])
    evaluated_on = evaluated_on or cfg.dataset
    trained_on = trained_on or evaluated_on
    multilabel = bool(getattr(methods[0].train_set, "multilabel_actions", False))
    return {
        "dataset": {"evaluated_on": evaluated_on, "trained_on": trained_on, "cross_dataset": trained_on != evaluated_on,
                    "attributes": list(getattr(methods[0].train_set, "attributes", ())) or
                    [f"attribute {i}" for i in range(num_attributes)],
                    "num_classes": num_classes,
                    "multilabel_actions": multilabel,
                    "train_videos": max(r["videos"]["train"] for r in rows.values()),
                    "test_videos": max(r["videos"]["test"] for r in rows.values())},
        "attackers": list(attackers),
        "imagenet_vit": None if imagenet_vit is None else {"file": str(imagenet_vit), "loaded_parameters": loaded},
        "rows": rows,
        "highlight": [m.name for m in methods if m.kind in ("transform", "transformed_root")],
        "config": {"model": model_cfg.to_dict(), "train": cfg.to_dict()},
        "commit": commit, "machine": machine(),
        "seconds": round(time.perf_counter() - t0, 1),
        "units": ("top1, f1, cmap, ap" + (", action_cmap, action_f1, action_ap" if multilabel else "")
                  + " and kept are fractions in [0, 1]; cmap, f1 and ap of a row are per video"),
    }


def build_splits(dataset: str | tuple[Dataset, Dataset], model_cfg: STPrivacyConfig, cfg: TrainConfig,
                 dataset_kwargs: dict[str, Any] | None) -> tuple[Dataset, Dataset, str]:
    """(train split, test split, dataset name) of a dataset name (built for ``model_cfg``'s clips with
    ``dataset_kwargs``, default ``cfg.dataset_kwargs`` for ``cfg.dataset``) or of a pair."""
    if isinstance(dataset, str):
        from ..train.data_factory import build_dataset

        kwargs = dataset_kwargs if dataset_kwargs is not None else (cfg.dataset_kwargs if dataset == cfg.dataset
                                                                    else {})
        geometry = {"frames": model_cfg.frames, "image_size": model_cfg.image_size, "tubelet": model_cfg.tubelet}
        return (build_dataset(dataset, "train", geometry, **dict(kwargs)),
                build_dataset(dataset, "test", geometry, **dict(kwargs)), dataset)
    if not (isinstance(dataset, (tuple, list)) and len(dataset) == 2):
        raise UsageError(f"dataset must be a dataset name or a (train_set, test_set) pair, "
                         f"got {type(dataset).__name__}")
    return dataset[0], dataset[1], cfg.dataset


def evaluate_transform(transform: Callable[[Tensor], Tensor], dataset: str | tuple[Dataset, Dataset], *,
                       model_cfg: STPrivacyConfig, cfg: TrainConfig, name: str = "transform",
                       attackers: Sequence[str] = ("video",), imagenet_vit: str | Path | None = None,
                       baselines: Sequence[str] = (), dataset_kwargs: dict[str, Any] | None = None,
                       trained_on: str | None = None, out: str | Path | None = None) -> dict[str, Any]:
    """The attack protocol for any callable ``Tensor[B, 3, T, H, W] -> Tensor[B, 3, T, H, W]``.

    Example::

        evaluation = evaluate_transform(my_anonymizer, "hmdb51", model_cfg=STPrivacyConfig.vit_s(),
                                        cfg=TrainConfig(dataset_kwargs={...}), baselines=["raw", "blur_strong"],
                                        out="eval/my_anonymizer")

    Args:
        transform: the frozen method (a torch module is put in eval mode; it runs under
            ``torch.no_grad`` on ``cfg.device``, on batches of clips in [0, 1]).
        dataset: a name of ``stprivacy.train.DATASETS`` (built with ``dataset_kwargs``, default
            ``cfg.dataset_kwargs``) or a ``(train_set, test_set)`` pair.
        model_cfg: the clip geometry (frames, image size, tubelet) the recognizers are built for.
        cfg: the recognizers' training (``eval_epochs``, batch size, lr, ``recognizer`` sizes, seed).
        attackers: see the module docstring; ``imagenet_vit`` is the file of the ``*_imagenet`` ones.
        baselines: built-in baselines evaluated in the same run, rows before the method's.
        trained_on: the benchmark the method was trained on, when it differs from ``dataset``
            (the cross-dataset, "novel actions" protocol).
        out: write ``evaluation.json``, ``evaluation.md`` and ``tradeoff.png`` there.

    Returns:
        The evaluation (:func:`evaluate_methods`); ``["rows"][name]`` is the method's row.
    """
    train_set, test_set, evaluated_on = build_splits(dataset, model_cfg, cfg, dataset_kwargs)
    methods = [baseline_method(b, model_cfg, train_set, test_set) for b in baselines]
    methods.append(transform_method(name, transform, train_set, test_set))
    evaluation = evaluate_methods(methods, model_cfg, cfg, attackers=attackers, imagenet_vit=imagenet_vit,
                                  trained_on=trained_on, evaluated_on=evaluated_on)
    if out is not None:
        write_evaluation(evaluation, out)
    return evaluation
