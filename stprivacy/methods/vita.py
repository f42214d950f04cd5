"""VITA: adversarial learning of a frame-wise degradation (Wu, Wang, Wang, Jin, "Privacy-preserving
deep action recognition: an adversarial learning framework and a new dataset", TPAMI 2020; first
version ECCV 2018).

The anonymizer is a degradation network ``f_d`` (Johnson et al.'s style-transfer transform net)
applied to every frame on its own. It is trained against two kinds of models it never keeps:

* a target action model ``f_T`` (here the project's ViT action recognizer,
  ``MethodContext.action_recognizer``) that must still recognize the action on ``f_d(X)``;
* an ensemble of ``M`` budget (privacy) models ``f_b``, 2D frame classifiers of different depths
  and widths, that try to read the privacy attributes from single degraded frames.

Recipe (the paper's, in the order :func:`train_vita` runs it):

1. ``f_d`` is pretrained toward the identity (MSE of its colour output to its input).
2. ``f_T`` and the ``f_b`` are pretrained on ``f_d(X)`` with ``f_d`` frozen.
3. Adversarial steps, one per batch: ``f_d`` takes one step on ``L_T + gamma * L_B``, where
   ``L_T`` is ``f_T``'s cross-entropy and ``L_B`` the negative binary entropy of the budget models'
   per-video predictions (mean over attributes), per video the largest over the ``M`` models, i.e.
   ``f_d`` fights the most confident attacker ("SuppressingMostConfident"). Then ``f_T`` takes one
   cross-entropy step if its accuracy on the batch is below ``target_threshold``, and every ``f_b``
   takes ``budget_steps`` steps on its own BCE (the video's labels broadcast to its frames).
4. Model restarting: every ``restart_every`` adversarial steps every budget model is re-initialized
   (new weights, new optimizer) and retrained on ``f_d(X)`` for ``restart_steps`` steps, so that
   ``f_d`` keeps facing fresh attackers rather than the one it has learnt to fool.

Choices (where the paper leaves a choice open or our scale forces one):

* ``f_d``'s output: the authors' net ends in ``tanh`` scaled to the pixel range; ours maps
  ``(tanh + 1) / 2`` onto [0, 1]. Instance norm (affine) after every convolution but the last (the
  authors' code normalizes the last one too): a normalized last layer cannot carry a frame's
  brightness, and the identity pretraining stalled there at an MSE of 0.04 (the benchmark's pixel
  variance is 0.067; without it 0.015 after the same steps). Weights keep PyTorch's default initialization (theirs: truncated normal,
  std 0.1); instance norm makes the scale immaterial. Upsampling by transposed 3x3 convolutions
  with output padding 1, so a side must be divisible by 4.
* ``grey`` (default on, the authors' ``use_avg_replicate``): the output's RGB average, repeated on
  the three channels. The identity pretraining fits the colour output, before this averaging,
  as in the authors' code.
* Sizes: ``width`` 8 and 2 residual blocks at the demo's 32 px (the paper: 32 and 5). The two
  9x9 convolutions at full resolution cost most of the recipe's time (on 128 frames of 32 x 32,
  ``f_d``'s forward and backward costs about 20 times the ViT target's step), which sets the
  budgets below.
* Budget models: the authors use ImageNet ResNet-50 V1/V2 and MobileNet 1.0/0.75 on 112 px; at 32
  px we write four small CNNs of different depth and width (:data:`BUDGET_ARCHS`), trained from
  scratch, on frames; a video's prediction is the mean of its frames' logits (as the TPAMI code
  averages over its 16 frames). Multi-label attributes: sigmoid BCE (the PA code's choice).
* ``L_B``: the negative per-attribute binary entropy (the ECCV form), not the PA code's BCE
  against all-ones targets, which rewards ``f_d`` for making every attribute look present rather
  than unreadable.
* The ``f_T`` update on a low batch accuracy uses the already degraded batch (``f_d`` fixed): the
  authors' loop also moves ``f_d`` on ``L_T`` there; ours moves ``f_d`` only in its own step, where
  ``L_T`` is already part of its loss. The accuracy is the training batch's (the authors': a
  validation batch's, 0.70 on HMDB51, about 90% of a raw top-1); the demo's recognizers reach
  100% top-1 on raw clips of this benchmark, and 0.85 updates ``f_T`` when it misses 3 or more of
  a batch of 16.
* Learning rates: the authors' Adam rates are ``f_d`` 1e-4, ``f_T`` 1e-5, ``f_b`` 1e-4, from
  pretrained models and 800 steps of 160 videos. We start from scratch and take a few hundred
  steps of 16 videos, so we keep the ratios 1 : 0.1 : 1 ten times higher (1e-3, 1e-4, 1e-3), and
  pretrain every network at ``lr_pretrain`` = 1e-3 (the authors' ``f_d`` pretraining rate).
* Steps, for about 90 s on 2 cores at the demo's 48 batches per epoch: pretraining 4 epochs of the
  identity on every 4th frame (``identity_frame_stride``; at 3e-3, ``lr_identity``: one epoch on
  every frame at 1e-3 left an MSE of 0.06, an output that neither ``f_T`` nor the ``f_b`` could
  learn anything from), 4 of ``f_T`` (192 steps; the ViT learns the benchmark's motion in about
  150) and 2 of the ``f_b``; 3 adversarial epochs (144 steps). The paper's 5 budget updates per step and restarts
  every 200 of 800 steps (retraining 200) become 2 updates, restarts every 50 steps, retraining 20
  steps. ``M`` stays 4, with budget models of width 8 that see every 4th frame
  (``budget_frame_stride`` 4, the offset turning with the step; the paper's see all 16): a
  privacy attribute is visible in any single frame, and all 8 frames would cost 4 times as much.
* Paper scale (16 x 112 x 112): ``width`` 32, ``residual_blocks`` 5, ``budget_width`` 32,
  ``budget_frame_stride`` 1, ``budget_steps`` 5, ``restart_every`` 200, ``restart_steps`` 200,
  ``lr_degrad`` 1e-4, ``lr_target`` 1e-5, ``lr_budget`` 1e-4, epochs set to the dataset's size.

Measured at the demo's scale (synthetic benchmark, 768 / 384 videos, seed 0, 2 threads, these
defaults; the demo's video attackers, 12 epochs): training took 99 s (159 s of CPU) on a shared
2-core machine. Top-1 / cMAP (AP face, skin_color, gender, nudity, relationship):

* raw: 100.0 / 78.9 (46.9, 100.0, 99.5, 81.1, 67.0)
* VITA: 100.0 / 61.3 (47.9, 49.8, 62.2, 98.2, 48.7)
* VITA's pretraining alone (``adv_epochs`` 0): 97.9 / 66.9 (47.5, 47.2, 89.9, 100.0, 50.1)

The grey output alone hides the actor's tint (skin_color); the adversarial steps bring the gender
glyph from 89.9 to 62.2 AP at no cost in top-1, and leave the nudity glyph readable (98.2).
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..model import STPrivacyConfig
from ..train.common import action_hits, action_loss
from .learned import LearnedMethod, MethodConfig, MethodContext, register

# (convolutions, width multiplier) of the M budget models: different depths and widths, as the
# authors' ensemble mixes ResNets and MobileNets. The first M are used.
BUDGET_ARCHS = ((2, 1), (3, 1), (4, 1), (3, 2), (2, 2), (4, 2), (5, 1), (5, 2))


@dataclass
class VITAConfig(MethodConfig):
    """VITA's sizes and recipe (module docstring, "Choices", for the defaults and the paper's).

    Attributes:
        width: channels of ``f_d``'s first convolution (then 2x and 4x after the downsamplings).
        residual_blocks: residual blocks of ``f_d`` at the lowest resolution.
        grey: average ``f_d``'s RGB output and repeat it on the three channels.
        num_budget: M, the budget models in the ensemble (at most ``len(BUDGET_ARCHS)``).
        budget_width: channels of the budget models' first convolution.
        budget_frame_stride: the budget models see every this-many-th frame of a clip (the offset
            turning with the step); 1 = every frame (the paper).
        gamma: the weight of the budget term ``L_B`` in ``f_d``'s loss.
        identity_epochs, target_epochs, budget_epochs: pretraining of ``f_d`` (identity), ``f_T``
            and the ``f_b``.
        identity_frame_stride: the identity pretraining fits every this-many-th frame of a clip.
        adv_epochs: epochs of adversarial steps (one step per batch).
        budget_steps: updates of every budget model per adversarial step.
        target_threshold: ``f_T`` is updated when its accuracy on the batch is below this fraction.
        restart_every: adversarial steps between restarts of the budget models; 0 = never.
        restart_steps: steps of retraining after a restart.
        lr_degrad, lr_target, lr_budget: Adam rates of the adversarial steps.
        lr_identity: Adam rate of the identity pretraining; lr_pretrain: of ``f_T``'s and the
            ``f_b``'s pretraining and of the restarted ``f_b``'s retraining.
    """

    width: int = 8
    residual_blocks: int = 2
    grey: bool = True
    num_budget: int = 4
    budget_width: int = 8
    budget_frame_stride: int = 4
    gamma: float = 0.5
    identity_epochs: int = 4
    identity_frame_stride: int = 4
    target_epochs: int = 4
    budget_epochs: int = 2
    adv_epochs: int = 3
    budget_steps: int = 2
    target_threshold: float = 0.85
    restart_every: int = 50
    restart_steps: int = 20
    lr_degrad: float = 1e-3
    lr_target: float = 1e-4
    lr_budget: float = 1e-3
    lr_identity: float = 3e-3
    lr_pretrain: float = 1e-3

    def __post_init__(self) -> None:
        for name in ("width", "budget_width", "budget_frame_stride", "identity_frame_stride", "budget_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("residual_blocks", "identity_epochs", "target_epochs", "budget_epochs", "adv_epochs",
                     "restart_every", "restart_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if isinstance(self.num_budget, bool) or not isinstance(self.num_budget, int) or \
                not 1 <= self.num_budget <= len(BUDGET_ARCHS):
            raise ValueError(f"num_budget must be an int in [1, {len(BUDGET_ARCHS)}], got {self.num_budget!r}")
        if not isinstance(self.grey, bool):
            raise ValueError(f"grey must be true or false, got {self.grey!r}")
        if not _is_number(self.gamma) or self.gamma < 0:
            raise ValueError(f"gamma must be a finite number >= 0, got {self.gamma!r}")
        if not _is_number(self.target_threshold) or not 0.0 <= self.target_threshold <= 1.0:
            raise ValueError(f"target_threshold must be a fraction in [0, 1], got {self.target_threshold!r}")
        for name in ("lr_degrad", "lr_target", "lr_budget", "lr_identity", "lr_pretrain"):
            value = getattr(self, name)
            if not _is_number(value) or value <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")



def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


# ----------------------------------------------------------------------------------------------
# f_d: the degradation network


def _conv_in(c_in: int, c_out: int, kernel: int, stride: int = 1, relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2),
              nn.InstanceNorm2d(c_out, affine=True)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


def _deconv_in(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1),
                         nn.InstanceNorm2d(c_out, affine=True), nn.ReLU(inplace=True))


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(_conv_in(channels, channels, 3), _conv_in(channels, channels, 3, relu=False))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class DegradationNet(nn.Module):
    """``f_d``: Johnson et al.'s transform net on every frame, output in [0, 1].

    conv9x9 (w) -> conv3x3 s2 (2w) -> conv3x3 s2 (4w) -> residual blocks (4w) -> deconv s2 (2w)
    -> deconv s2 (w) -> conv9x9 (3), instance norm after each convolution but the last, ReLU after
    all but the last and each block's second; then ``(tanh + 1) / 2`` and, with ``grey``, the RGB average.

    Args:
        width: w. residual_blocks: their number. grey: see :class:`VITAConfig`.
        frames, image_size: the clip geometry the net is built for (any T and any side divisible
            by 4 work; the geometry is recorded for checks only).
    """

    def __init__(self, *, width: int = 8, residual_blocks: int = 2, grey: bool = True, frames: int = 8,
                 image_size: int = 32):
        super().__init__()
        self.grey = grey
        self.frames, self.image_size = frames, image_size
        w = width
        self.net = nn.Sequential(
            _conv_in(3, w, 9), _conv_in(w, 2 * w, 3, stride=2), _conv_in(2 * w, 4 * w, 3, stride=2),
            *[_ResidualBlock(4 * w) for _ in range(residual_blocks)],
            _deconv_in(4 * w, 2 * w), _deconv_in(2 * w, w), nn.Conv2d(w, 3, 9, padding=4),
        )

    def colour_frames(self, frames: Tensor) -> Tensor:
        """``Tensor[N, 3, H, W]`` in [0, 1] -> ``Tensor[N, 3, H, W]`` in [0, 1], before the grey
        averaging (what the identity pretraining fits)."""
        return (torch.tanh(self.net(frames)) + 1) / 2

    def degrade_frames(self, frames: Tensor) -> Tensor:
        """``Tensor[N, 3, H, W]`` -> ``Tensor[N, 3, H, W]``: the anonymized frames."""
        out = self.colour_frames(frames)
        return out.mean(dim=1, keepdim=True).expand_as(out) if self.grey else out

    def forward(self, video: Tensor) -> Tensor:
        """``Tensor[B, 3, T, H, W]`` in [0, 1] -> ``Tensor[B, 3, T, H, W]`` in [0, 1]."""
        frames, shape = to_frames(video)
        return from_frames(self.degrade_frames(frames), shape)


def to_frames(video: Tensor) -> tuple[Tensor, tuple[int, int]]:
    """``Tensor[B, 3, T, H, W]`` -> ``Tensor[B*T, 3, H, W]`` and ``(B, T)``; ValueError for a
    video the net cannot take (not 3 channels, or a side not divisible by 4)."""
    if not isinstance(video, Tensor) or video.dim() != 5 or video.shape[1] != 3:
        raise ValueError(f"video must be a Tensor[B, 3, T, H, W], got {getattr(video, 'shape', type(video))}")
    B, C, T, H, W = video.shape
    if H % 4 or W % 4:
        raise ValueError(f"VITA's degradation net needs H and W divisible by 4 (two stride-2 stages), got {H}x{W}")
    return video.transpose(1, 2).reshape(B * T, C, H, W), (B, T)


def from_frames(frames: Tensor, bt: tuple[int, int]) -> Tensor:
    """Inverse of :func:`to_frames`: ``Tensor[B*T, C, H, W]`` -> ``Tensor[B, C, T, H, W]``."""
    B, T = bt
    _, C, H, W = frames.shape
    return frames.reshape(B, T, C, H, W).transpose(1, 2)


def build_vita(config: VITAConfig, model_cfg: STPrivacyConfig) -> DegradationNet:
    return DegradationNet(width=config.width, residual_blocks=config.residual_blocks, grey=config.grey,
                          frames=model_cfg.frames, image_size=model_cfg.image_size)


# ----------------------------------------------------------------------------------------------
# f_b: the budget (privacy) models and the losses


class FrameCNN(nn.Module):
    """A budget model: ``depth`` 3x3 convolutions (stride 2 from the second, width doubling up to
    4x), batch norm, ReLU, global average pool, linear head; ``Tensor[N, 3, H, W]`` -> logits
    ``Tensor[N, P]``."""

    def __init__(self, num_attributes: int, *, depth: int, width: int):
        super().__init__()
        layers, c_in = [], 3
        for i in range(depth):
            c_out = width * min(2 ** i, 4)
            layers += [nn.Conv2d(c_in, c_out, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                       nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            c_in = c_out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(c_in, num_attributes)

    def forward(self, frames: Tensor) -> Tensor:
        return self.head(self.features(frames))

    def reset(self) -> None:
        """New random weights (the model restarting)."""
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()


def build_budget_models(config: VITAConfig, num_attributes: int) -> nn.ModuleList:
    return nn.ModuleList(FrameCNN(num_attributes, depth=depth, width=config.budget_width * mult)
                         for depth, mult in BUDGET_ARCHS[:config.num_budget])


def video_logits(budget: nn.Module, frames: Tensor, bt: tuple[int, int]) -> Tensor:
    """A budget model's per-video logits: the mean of its frame logits, ``Tensor[B, P]``."""
    B, T = bt
    return budget(frames).reshape(B, T, -1).mean(dim=1)


def negative_entropy(logits: Tensor) -> Tensor:
    """``Tensor[B, P]`` logits -> ``Tensor[B]``: minus the mean over attributes of the binary
    entropy (nats) of ``sigmoid(logits)``; in [-log 2, 0], highest where the model is sure."""
    p = torch.sigmoid(logits)
    # -H(p) = p log p + (1 - p) log(1 - p), with log sigmoid for stability at saturated logits.
    return (p * F.logsigmoid(logits) + (1 - p) * F.logsigmoid(-logits)).mean(dim=-1)


def subsample(frames: Tensor, bt: tuple[int, int], stride: int, offset: int = 0) -> tuple[Tensor, tuple[int, int]]:
    """Every ``stride``-th frame of each clip from ``offset % stride``: ``Tensor[B*T, C, H, W]`` ->
    ``Tensor[B*T', C, H, W]`` and ``(B, T')`` (what the budget models see)."""
    if stride == 1:
        return frames, bt
    B, T = bt
    offset = offset % min(stride, T)
    picked = frames.reshape(B, T, *frames.shape[1:])[:, offset::stride]
    return picked.reshape(-1, *frames.shape[1:]), (B, picked.shape[1])


def budget_adversary_loss(logits: list[Tensor]) -> Tensor:
    """``L_B``: per video the largest negative entropy over the M models (the most confident
    attacker), averaged over the batch. ``logits``: M tensors ``Tensor[B, P]`` -> scalar."""
    return torch.stack([negative_entropy(z) for z in logits]).amax(dim=0).mean()


def budget_bce(budget: nn.Module, frames: Tensor, privacy: Tensor, bt: tuple[int, int]) -> Tensor:
    """A budget model's BCE on frames, the video's labels ``Tensor[B, P]`` broadcast to its T frames."""
    B, T = bt
    labels = privacy.unsqueeze(1).expand(B, T, privacy.shape[-1]).reshape(B * T, -1)
    return F.binary_cross_entropy_with_logits(budget(frames), labels)


@contextlib.contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """No gradients for the modules' parameters inside (a step of someone else's loss)."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


# ----------------------------------------------------------------------------------------------
# Training


def degradation_step(anonymizer: DegradationNet, target: nn.Module, budgets: nn.ModuleList,
                     optimizer: torch.optim.Optimizer, video: Tensor, action: Tensor, gamma: float,
                     frame_stride: int = 1, offset: int = 0) -> tuple[float, float, float]:
    """One ``f_d`` update on ``L_T + gamma * L_B`` with ``f_T`` and the ``f_b`` fixed.

    Args:
        video: ``Tensor[B, 3, T, H, W]`` in [0, 1]; action: ``Tensor[B]`` class indices (or ``Tensor[B, K]``
            multi-hot, learned with BCE).
        frame_stride, offset: the frames the budget models see (:func:`subsample`).

    Returns:
        ``(loss, L_T, L_B)`` before the update.
    """
    frames, bt = to_frames(video)
    with frozen(target, budgets):
        degraded = anonymizer.degrade_frames(frames)
        loss_t = action_loss(target(from_frames(degraded, bt)), action)
        seen, seen_bt = subsample(degraded, bt, frame_stride, offset)
        loss_b = budget_adversary_loss([video_logits(b, seen, seen_bt) for b in budgets])
        loss = loss_t + gamma * loss_b
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return loss.item(), loss_t.item(), loss_b.item()


def budget_update(budgets: nn.ModuleList, optimizers: list[torch.optim.Optimizer], frames: Tensor,
                  bt: tuple[int, int], privacy: Tensor) -> float:
    """One BCE update of every budget model on degraded frames ``Tensor[B*T, 3, H, W]`` (no graph to
    ``f_d``), labels ``Tensor[B, P]``; returns the mean BCE over the models before the update."""
    losses = []
    for budget, optimizer in zip(budgets, optimizers):
        loss = budget_bce(budget, frames, privacy, bt)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return sum(losses) / len(losses)


def target_update(target: nn.Module, optimizer: torch.optim.Optimizer, degraded_video: Tensor, action: Tensor,
                  threshold: float) -> tuple[float, float, bool]:
    """``f_T``'s cross-entropy update on a degraded batch ``Tensor[B, 3, T, H, W]``, taken only where
    its accuracy on the batch is below ``threshold`` (above 1: always). Returns ``(loss, accuracy,
    updated)``, loss and accuracy before the update."""
    logits = target(degraded_video)
    loss = action_loss(logits, action)
    accuracy = action_hits(logits, action).float().mean().item()  # hit@1 for multi-label actions
    updated = accuracy < threshold
    if updated:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return loss.item(), accuracy, updated


@torch.no_grad()
def _degraded(anonymizer: DegradationNet, video: Tensor) -> tuple[Tensor, tuple[int, int]]:
    frames, bt = to_frames(video)
    return anonymizer.degrade_frames(frames), bt


def _stream(ctx: MethodContext, first_epoch: int, desc: str) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Batches without end, epoch after epoch from ``first_epoch`` (the restarts' retraining)."""
    epoch = first_epoch
    while True:
        yield from ctx.batches(epoch, desc)
        epoch += 1


def train_vita(anonymizer: DegradationNet, config: VITAConfig, ctx: MethodContext) -> dict[str, list[float]]:
    """Train ``f_d`` in place by the recipe of the module docstring; ``f_T`` and the ``f_b`` are built
    here and dropped. Returns per-epoch means: ``identity_mse``; ``target_ce`` / ``target_acc``
    (pretraining); ``budget_bce`` (pretraining); and of the adversarial steps ``adv_loss``
    (``L_T + gamma L_B``), ``adv_action_ce`` (L_T), ``adv_budget`` (L_B, in [-log 2, 0]),
    ``adv_budget_bce``, ``adv_target_acc`` and ``adv_target_updates`` (fraction of steps with an
    ``f_T`` update)."""
    history: dict[str, list[float]] = {}
    epoch_id = iter(range(1_000_000))  # every epoch of every phase its own shuffle
    stride = config.budget_frame_stride

    def record(values: dict[str, list[float]]) -> None:
        for key, v in values.items():
            history.setdefault(key, []).append(sum(v) / max(1, len(v)))

    # 1. f_d toward the identity (its colour output, before the grey averaging).
    optimizer = ctx.optimizer([anonymizer], config.lr_identity)
    step = 0  # turns the frame offsets of subsample()
    for _ in range(config.identity_epochs):
        mse = []
        for video, _, _ in ctx.batches(next(epoch_id), "VITA f_d identity"):
            frames, _ = subsample(*to_frames(video), config.identity_frame_stride, step)
            step += 1
            loss = F.mse_loss(anonymizer.colour_frames(frames), frames)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            mse.append(loss.item())
        record({"identity_mse": mse})

    # 2. f_T on f_d(X), f_d fixed.
    target = ctx.action_recognizer().train()
    target_opt = ctx.optimizer([target], config.lr_pretrain)
    for _ in range(config.target_epochs):
        ce, acc = [], []
        for video, action, _ in ctx.batches(next(epoch_id), "VITA f_T init"):
            degraded, bt = _degraded(anonymizer, video)
            loss, accuracy, _ = target_update(target, target_opt, from_frames(degraded, bt), action, threshold=2.0)
            ce.append(loss)
            acc.append(accuracy)
        record({"target_ce": ce, "target_acc": acc})

    # 3. the budget models on f_d(X), f_d fixed.
    budgets = build_budget_models(config, ctx.num_attributes).to(ctx.device).train()
    budget_opts = [ctx.optimizer([b], config.lr_pretrain) for b in budgets]
    for _ in range(config.budget_epochs):
        bce = []
        for video, _, privacy in ctx.batches(next(epoch_id), "VITA f_b init"):
            degraded, bt = _degraded(anonymizer, video)
            bce.append(budget_update(budgets, budget_opts, *subsample(degraded, bt, stride, step), privacy))
            step += 1
        record({"budget_bce": bce})

    # 4. adversarial steps, the budget models restarted every restart_every steps.
    degrad_opt = ctx.optimizer([anonymizer], config.lr_degrad)
    target_opt = ctx.optimizer([target], config.lr_target)
    budget_opts = [ctx.optimizer([b], config.lr_budget) for b in budgets]
    restart_batches = _stream(ctx, 1_000_000, "VITA f_b restart")
    keys = ("adv_loss", "adv_action_ce", "adv_budget", "adv_budget_bce", "adv_target_acc", "adv_target_updates")
    adv_step = 0
    for _ in range(config.adv_epochs):
        logs: dict[str, list[float]] = {k: [] for k in keys}
        for video, action, privacy in ctx.batches(next(epoch_id), "VITA adversarial"):
            loss, loss_t, loss_b = degradation_step(anonymizer, target, budgets, degrad_opt, video, action,
                                                    config.gamma, stride, step)
            degraded, bt = _degraded(anonymizer, video)
            _, accuracy, updated = target_update(target, target_opt, from_frames(degraded, bt), action,
                                                 config.target_threshold)
            seen, seen_bt = subsample(degraded, bt, stride, step)
            bce = [budget_update(budgets, budget_opts, seen, seen_bt, privacy) for _ in range(config.budget_steps)]
            for key, value in zip(keys, (loss, loss_t, loss_b, bce[0], accuracy, float(updated))):
                logs[key].append(value)
            step += 1
            adv_step += 1
            if config.restart_every and adv_step % config.restart_every == 0:
                budget_opts = restart_budgets(anonymizer, budgets, config, ctx, restart_batches)
        record(logs)
    return history


def restart_budgets(anonymizer: DegradationNet, budgets: nn.ModuleList, config: VITAConfig, ctx: MethodContext,
                    batches: Iterator[tuple[Tensor, Tensor, Tensor]]) -> list[torch.optim.Optimizer]:
    """Model restarting: new random weights for every budget model, ``restart_steps`` steps of
    training on ``f_d(X)`` (at the pretraining rate, as they start from scratch), and fresh
    optimizers at ``lr_budget`` for the adversarial steps that follow."""
    for budget in budgets:
        budget.reset()
    optimizers = [ctx.optimizer([b], config.lr_pretrain) for b in budgets]
    for i in range(config.restart_steps):
        video, _, privacy = next(batches)
        degraded, bt = _degraded(anonymizer, video)
        seen, seen_bt = subsample(degraded, bt, config.budget_frame_stride, i)
        budget_update(budgets, optimizers, seen, seen_bt, privacy)
    return [ctx.optimizer([b], config.lr_budget) for b in budgets]


register(LearnedMethod(
    name="vita",
    title="VITA",
    citation="Wu, Wang, Wang, Jin, Privacy-preserving deep action recognition: an adversarial learning framework "
             "and a new dataset, TPAMI 2020 (ECCV 2018); github VITA-Group/Privacy-AdversarialLearning",
    config_class=VITAConfig,
    build=build_vita,
    train=train_vita,
))
