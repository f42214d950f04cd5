"""The learned comparison methods (VITA, SPAct, Collective): one registry, and one way to train,
save, load and attack each of them.

A learned method is an anonymizer module (``Tensor[B, 3, T, H, W]`` in [0, 1] -> the same shape,
in [0, 1]) with its own config dataclass and its own training recipe, the one of its paper. Each
method's module registers a :class:`LearnedMethod`; everything else (``stprivacy train --method
NAME``, checkpoints, ``stprivacy evaluate`` rows) goes through this file, so a method is one module.

What every method gets for training is a :class:`MethodContext`: the training videos with their
action and privacy labels (a method uses the labels its paper uses, and says so), the clip geometry,
the run's :class:`~stprivacy.train.TrainConfig` (batch size, seed, device, the recognizers' sizes,
progress) and the helpers that keep the methods alike where their papers are silent: seeded
batches, the project's action recognizer as the target model, AdamW.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..errors import UsageError
from ..model import STPrivacyConfig
from ..model.config import dataclass_from_dict
from ..model.pretrained import load_pretrained_vit
from ..progress import progress_bar
from ..train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ..train.common import NormalizedRecognizer, make_recognizer
from ..train.config import TrainConfig
from ..train.distributed import is_main, resolve_device
from ..train.evaluation import split_for_validation

# Imported by name in METHOD_MODULES so that registering is importing: each module calls register().
METHOD_MODULES = ("vita", "spact", "collective")


@dataclass(frozen=True)
class LearnedMethod:
    """A learned anonymizer of the comparison.

    Attributes:
        name: the ``--method`` value, the run config's section name and the checkpoint's tag.
        title: the row's name in tables ("VITA").
        citation: where the recipe comes from, for the report.
        config_class: a dataclass deriving from :class:`MethodConfig` (``from_dict``, ``to_dict``); its ``__post_init__``
            raises ValueError naming a bad field.
        build: ``config, model_cfg -> nn.Module`` (the anonymizer, on the CPU, untrained).
        train: ``anonymizer, config, MethodContext -> history`` (trains the anonymizer in place; the
            history is ``{"loss name": [one value per epoch]}``).
    """

    name: str
    title: str
    citation: str
    config_class: type
    build: Callable[[Any, STPrivacyConfig], nn.Module]
    train: Callable[[nn.Module, Any, "MethodContext"], dict[str, list[float]]]


class MethodConfig:
    """Base of a learned method's config dataclass: ``to_dict`` (plain JSON types) and
    ``from_dict`` (unknown keys refused by name), so every method reads and writes configs alike."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        return dataclass_from_dict(cls, data, cls.__name__)


REGISTRY: dict[str, LearnedMethod] = {}


def register(method: LearnedMethod) -> LearnedMethod:
    REGISTRY[method.name] = method
    return method


def _load_all() -> None:
    import importlib

    for module in METHOD_MODULES:
        importlib.import_module(f"{__package__}.{module}")


def method_names() -> tuple[str, ...]:
    """The registered learned methods, in the order of :data:`METHOD_MODULES`."""
    _load_all()
    return tuple(name for name in METHOD_MODULES if name in REGISTRY)


def get_method(name: str) -> LearnedMethod:
    """The learned method called ``name``; a :class:`UsageError` naming the choices otherwise."""
    names = method_names()
    if name not in REGISTRY:
        raise UsageError(f"--method: unknown learned method {name!r}; expected stprivacy or one of {list(names)}")
    return REGISTRY[name]


def method_config(method: LearnedMethod, section: dict[str, Any] | None) -> Any:
    """The method's config from its run-config section (``{}`` or None: its defaults)."""
    return method.config_class.from_dict({} if section is None else section)


@dataclass
class MethodContext:
    """What a learned method's training gets (see the module docstring).

    Attributes:
        train_set: items ``(video Tensor[3, T, H, W] in [0, 1], action int, privacy Tensor[P])``.
        num_classes: action classes; ``num_attributes``: privacy attributes.
        model_cfg: the clip geometry (frames, image_size, tubelet) and the ViT sizes' defaults.
        cfg: batch size, seed, device, recognizer sizes (``cfg.recognizer``), progress.
        out_dir: where the run writes (may be None in tests).
    """

    train_set: Dataset
    num_classes: int
    num_attributes: int
    model_cfg: STPrivacyConfig
    cfg: TrainConfig
    out_dir: Path | None = None

    @property
    def device(self) -> torch.device:
        return resolve_device(self.cfg.device)

    def batches(self, epoch: int, desc: str = "", batch_size: int | None = None) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """One epoch of shuffled batches ``(video, action, privacy float)`` on the device, the order
        a function of ``(cfg.seed, epoch)`` only; the last incomplete batch is dropped (where the
        set is smaller than a batch, one batch of all of it). A progress bar or line per epoch."""
        size = min(batch_size or self.cfg.batch_size, len(self.train_set))
        generator = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
        loader = DataLoader(self.train_set, batch_size=size, shuffle=True, drop_last=True, generator=generator,
                            num_workers=self.cfg.num_workers)
        device = self.device
        for video, action, privacy in self.progress(loader, desc):
            yield (video.to(device, non_blocking=True), action.to(device, non_blocking=True),
                   privacy.to(device, torch.float32, non_blocking=True))

    def progress(self, iterable: Iterable, desc: str):
        return progress_bar(iterable, desc=desc, unit="batch", leave=False, disable=not (self.cfg.progress and is_main()))

    def action_recognizer(self) -> NormalizedRecognizer:
        """A fresh action recognizer of the project (the ViT the attack protocol uses too), on the
        device: the methods' target model, for parity with STPrivacy (their papers used C3D or R3D).
        Where the run starts from an ImageNet ViT (``cfg.pretrained``, a file or ``"timm:NAME"``),
        so does this recognizer, as STPrivacy's recognizers do in the same run."""
        recognizer = make_recognizer(self.model_cfg, self.cfg, self.num_classes, multilabel=False)
        if self.cfg.pretrained:
            load_pretrained_vit(recognizer.classifier, self.cfg.pretrained)
        return recognizer.to(self.device)

    def optimizer(self, modules: Iterable[nn.Module], lr: float, weight_decay: float = 0.0) -> torch.optim.Adam:
        """Adam over the modules' trainable parameters (the competitors' papers all use Adam)."""
        params = [p for m in modules for p in m.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def train_method(name: str, method_cfg: Any, model_cfg: STPrivacyConfig, cfg: TrainConfig, train_set: Dataset, *,
                 num_classes: int, num_attributes: int, out_dir: Path | None = None
                 ) -> tuple[nn.Module, dict[str, list[float]]]:
    """Build and train the learned method ``name`` from its seed; returns the trained anonymizer
    (in eval mode, on the CPU) and its history. With ``out_dir``, writes ``out_dir/<name>.pt``."""
    method = get_method(name)
    torch.manual_seed(cfg.seed)
    anonymizer = method.build(method_cfg, model_cfg)
    # The validation videos that choose the attackers stay unseen by the anonymizer too.
    fit_set, _ = split_for_validation(train_set, cfg)
    ctx = MethodContext(fit_set, num_classes, num_attributes, model_cfg, cfg, out_dir)
    anonymizer.to(ctx.device).train()
    history = method.train(anonymizer, method_cfg, ctx)
    anonymizer.cpu().eval()
    if out_dir is not None and is_main():
        save_method_checkpoint(Path(out_dir) / f"{name}.pt", name, method_cfg, model_cfg, cfg, anonymizer, history)
    return anonymizer, history


def save_method_checkpoint(path: Path, name: str, method_cfg: Any, model_cfg: STPrivacyConfig, cfg: TrainConfig,
                           anonymizer: nn.Module, history: dict[str, list[float]]) -> Path:
    return save_checkpoint(path, {
        "method": name, "method_config": method_cfg.to_dict(),
        "config": {"model": model_cfg.to_dict(), "train": cfg.to_dict()},
        "model": anonymizer.state_dict(), "history": history,
    })


def is_method_checkpoint(checkpoint: dict[str, Any]) -> bool:
    return isinstance(checkpoint, dict) and "method" in checkpoint


def anonymizer_from_checkpoint(path: Path, checkpoint: dict[str, Any]) -> tuple[LearnedMethod, nn.Module]:
    """The learned method and its trained anonymizer (eval mode) from a loaded checkpoint of
    :func:`train_method`; a :class:`CheckpointError` naming ``path`` where it does not fit."""
    name = checkpoint.get("method")
    _load_all()
    if name not in REGISTRY:
        raise CheckpointError(f"{path} is a checkpoint of an unknown method {name!r}; known: {list(REGISTRY)}")
    method = REGISTRY[name]
    try:
        method_cfg = method.config_class.from_dict(checkpoint["method_config"])
        model_cfg = STPrivacyConfig.from_dict(checkpoint["config"]["model"])
        anonymizer = method.build(method_cfg, model_cfg)
        anonymizer.load_state_dict(checkpoint["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: not a usable {method.title} checkpoint ({type(e).__name__}: {e})") from e
    return method, anonymizer.eval()


def load_method_checkpoint(path: str | Path) -> tuple[LearnedMethod, nn.Module]:
    """:func:`anonymizer_from_checkpoint` of a file (read safely, ``weights_only``)."""
    return anonymizer_from_checkpoint(Path(path), load_checkpoint(path))


def learned_row(method: LearnedMethod, anonymizer: nn.Module, cfg: TrainConfig, train_set: Dataset,
                test_set: Dataset):
    """A trained learned method as a row of :func:`stprivacy.attack.evaluate_methods`: a frozen
    transform that drops nothing, so its attackers see pixels only, as for the fixed baselines."""
    from ..attack.evaluate import Method, checked_transform  # the attack protocol imports the training code

    anonymizer = anonymizer.to(resolve_device(cfg.device)).eval()
    return Method(method.title, checked_transform(anonymizer, f"the {method.title} anonymizer"), train_set, test_set,
                  "learned", info={"method": method.name, "citation": method.citation})
