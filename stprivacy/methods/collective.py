"""Collective (Zhang et al., "Collective protection: preventing sensitive inferences via integrative
transformation", ICDM 2019, and its journal extension by the same authors): privacy by style transfer.

One network f rewrites every input so that a frozen action recognizer phi (the "loss network")
still sees the input's *content* while the output takes the *style* of random noise N: the
second-order statistics (Gram matrices) of phi's features, which carry texture and colour, are
pushed to those of noise, while phi's deeper features and its action prediction are kept. One
stage, no adversary and no privacy labels: one transform hides every attribute at once (the
"integrative" of the title). The loss, for a clip x of action y (eq. 3-9 of the journal version):

    L = lc * ||phi_c(f(x)) - phi_c(x)||^2 / (N_c D_c)
      + ls * sum_{j in (s1, s2)} ||G(phi_j(f(x))) - G(phi_j(N))||_F^2
      + lu * CE(phi(f(x)), y),          G(F) = F^T F / (N D) for features F: Tensor[N, D],

with ls = .55, lc = .35, lu = .1, Adam at 1e-3, and phi trained on the raw clips first, then frozen.

Choices (ours: the method was published for sensor windows, and the STPrivacy paper does not say
how it ran it on video):

* **The transform net f** is 2D and frame-wise (the clip is viewed as ``B*T`` images), the
  authors' network with 3x3 kernels instead of 1x3: conv 3x3 to ``widths[0]`` + ReLU, max-pool 2,
  conv 3x3 to ``widths[1]`` + ReLU, max-pool 2, two stride-2 3x3 transposed convolutions
  (``widths[1]``, then ``widths[0]``, each + ReLU), a linear 3x3 conv to RGB; no skips, so every
  detail of the output passes the 4x-downsampled bottleneck. The authors' code has one more conv
  after each transposed conv; we keep the plainer shape of the comparison's summary. Frame-wise
  like the other comparison methods (VITA, SPAct); H and W must be multiples of 4, any T.
* **Input standardized, output squashed by a sigmoid** (not clamped). The input is standardized as
  the project's recognizers standardize theirs ((x - 0.45) / 0.225), so the first conv sees O(1)
  values. The authors' last layer is linear (their sensor data were unbounded); ours must give
  [0, 1]. A clamp would zero the gradient of every pixel that the style term pushes past the
  range, so that pixel could never come back, and the noise style pushes hard towards extremes;
  the sigmoid keeps a gradient everywhere, and the losses are computed on the squashed output, the
  video that is released, so training and deployment see the same thing.
* **phi = the project's action recognizer** (``ctx.action_recognizer()``, the ViT the attack
  protocol uses, for parity with STPrivacy; the authors' was a small CNN), trained from scratch
  with cross-entropy on the raw training clips for ``lossnet_epochs`` epochs (Adam at
  ``lossnet_lr``, Keras' default, as the authors' lossnet was), then frozen (eval mode, no
  gradients to its weights; gradients still flow through it to f).
* **Feature layers.** The authors take VGG-like stages (style at the first two stages, content
  at the deeper one). For the ViT the features are its token features ``Tensor[B, N, D]``, the
  Gram matrix D x D over the tokens, normalized by N*D, as the authors normalize by C*H*W. Layer
  ``k`` is the output of block ``k`` (1-based), layer 0 the patch embedding (with its position
  embedding). ``feature_layers`` empty picks the first two stages: blocks 2 and 4 when the
  recognizer has at least 4 blocks (ViT-S: 12), else the last two points, so the demo's one-block
  recognizer gives the patch embedding and the block. Style uses both, content the deeper.
* **Reading the features: forward hooks** on the recognizer's embedding and blocks. The usability
  term needs phi's full forward on f(x) anyway, so the hooks read the features of that very pass;
  calling the encoder's submodules ourselves would copy ``_ViTEncoder.forward`` (and the
  standardization of ``NormalizedRecognizer``), and a later change there would make our features
  and phi's logits come from two different networks without any error.
* **N** is one fixed noise clip, uniform in [0, 1], the size of the training clips, drawn from a
  generator seeded with ``noise_seed`` (the authors fix one sample, with seed 33), its Gram
  matrices computed once. The authors drew U[-20, 20] against standardized sensor data and a
  linear output; our output lives in [0, 1], and U[0, 1] is the widest noise whose style it can
  reach (phi standardizes it as it does any clip).
* **Batches**: ``ctx.cfg.batch_size`` clips (the authors trained with batch 1); the loss terms are
  batch means of the per-clip terms. Epochs: ``epochs`` = 10, the authors' number, by default at
  every scale; phi takes 6 (the least in which it learns the benchmark's motion). Fewer epochs of
  f are not the method: measured with 3 at seed 0 (768 clips), f's content loss was still falling
  (10.4, 9.8, 9.0) and phi read no action from f(x) (its cross-entropy 2.6, above chance), so
  fresh attackers read neither action nor privacy (top-1 at chance).
* Privacy labels are never read.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..model import STPrivacyConfig
from ..model.layers import PIXEL_MEAN, PIXEL_STD
from ..train.common import NormalizedRecognizer, action_hits, action_loss
from .learned import LearnedMethod, MethodConfig, MethodContext, register


@dataclass
class CollectiveConfig(MethodConfig):
    """Collective's recipe; defaults sized for the demo's benchmark (768 clips of 8 x 32 x 32).

    Attributes:
        epochs: epochs of the transform net's training (the authors: 10).
        lr: Adam learning rate of the transform net (the authors: 1e-3).
        lossnet_epochs: epochs of phi's training on the raw clips before it is frozen.
        lossnet_lr: Adam learning rate of phi.
        lambda_content, lambda_style, lambda_usability: the loss weights (.35, .55, .1).
        widths: channels of the transform net's two stages.
        feature_layers: the two points of phi read, ``[style_1, style_2 = content]``, strictly
            increasing; 0 = the patch embedding, k = block k. Empty: the first two stages (see the
            module's "Choices").
        noise_seed: seeds the one noise clip N.
    """

    epochs: int = 10
    lr: float = 1e-3
    lossnet_epochs: int = 6
    lossnet_lr: float = 1e-3
    lambda_content: float = 0.35
    lambda_style: float = 0.55
    lambda_usability: float = 0.1
    widths: list[int] = field(default_factory=lambda: [32, 64])
    feature_layers: list[int] = field(default_factory=list)
    noise_seed: int = 33

    def __post_init__(self) -> None:
        for name in ("epochs", "lossnet_epochs", "noise_seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        for name in ("lr", "lossnet_lr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        for name in ("lambda_content", "lambda_style", "lambda_usability"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 <= value and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        self.widths = list(self.widths) if isinstance(self.widths, (list, tuple)) else self.widths
        if (not isinstance(self.widths, list) or len(self.widths) != 2
                or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in self.widths)):
            raise ValueError(f"widths must be two positive ints, got {self.widths!r}")
        layers = self.feature_layers
        self.feature_layers = list(layers) if isinstance(layers, (list, tuple)) else layers
        if not isinstance(self.feature_layers, list) or not (
                self.feature_layers == [] or (len(self.feature_layers) == 2
                                              and all(isinstance(k, int) and not isinstance(k, bool) and k >= 0
                                                      for k in self.feature_layers)
                                              and self.feature_layers[0] < self.feature_layers[1])):
            raise ValueError(f"feature_layers must be empty (automatic) or two strictly increasing ints >= 0, "
                             f"got {layers!r}")



class TransformNet(nn.Module):
    """The transform net f: a frame-wise fully convolutional encoder-decoder without skips.

    Args:
        widths: channels of the two stages (the authors': 16, 32 for one-channel sensor windows).
    """

    def __init__(self, widths: Sequence[int] = (32, 64)):
        super().__init__()
        c1, c2 = widths
        self.net = nn.Sequential(
            nn.Conv2d(3, c1, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            # kernel 3, stride 2, output_padding 1: exactly twice the size (Keras' "same").
            nn.ConvTranspose2d(c2, c2, 3, stride=2, padding=1, output_padding=1), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(c2, c1, 3, stride=2, padding=1, output_padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c1, 3, 3, padding=1),  # linear, as the authors' last layer
        )

    def forward(self, video: Tensor) -> Tensor:
        """``Tensor[B, 3, T, H, W]`` in [0, 1] -> ``Tensor[B, 3, T, H, W]`` in (0, 1); H, W multiples of 4."""
        if not isinstance(video, Tensor) or video.dim() != 5 or video.shape[1] != 3:
            raise ValueError(f"video must be a Tensor[B, 3, T, H, W], got "
                             f"{tuple(video.shape) if isinstance(video, Tensor) else type(video).__name__}")
        B, C, T, H, W = video.shape
        if H % 4 or W % 4:
            raise ValueError(f"Collective's transform net needs H and W divisible by 4 (two 2x poolings), "
                             f"got H x W = {H} x {W}")
        frames = video.transpose(1, 2).reshape(B * T, C, H, W)
        out = torch.sigmoid(self.net((frames - PIXEL_MEAN) / PIXEL_STD))  # why a sigmoid: module docstring
        return out.reshape(B, T, C, H, W).transpose(1, 2)


def build(config: CollectiveConfig, model_cfg: STPrivacyConfig) -> TransformNet:
    if model_cfg.image_size % 4:
        raise ValueError(f"Collective needs image_size divisible by 4, got {model_cfg.image_size}")
    if model_cfg.in_chans != 3:
        raise ValueError(f"Collective's transform net is RGB: in_chans must be 3, got {model_cfg.in_chans}")
    return TransformNet(config.widths)


# --------------------------------------------------------------------------------------------- losses

def gram_matrix(features: Tensor) -> Tensor:
    """``Tensor[B, N, D]`` token features -> ``Tensor[B, D, D]`` Gram matrices ``F^T F / (N D)``."""
    _, N, D = features.shape
    return features.transpose(1, 2) @ features / (N * D)


def content_loss(features: Tensor, target: Tensor) -> Tensor:
    """Mean over the batch of ``||F - F_target||^2 / (N D)``; both ``Tensor[B, N, D]``."""
    B, N, D = features.shape
    return (features - target).pow(2).sum() / (B * N * D)


def style_loss(features: Sequence[Tensor], target_grams: Sequence[Tensor]) -> Tensor:
    """Sum over the layers of the batch mean of ``||G(F_j) - G_j||_F^2``.

    Args:
        features: per layer, ``Tensor[B, N_j, D_j]`` (the transformed clips' features).
        target_grams: per layer, ``Tensor[D_j, D_j]`` (the noise clip's Gram matrix).
    """
    return sum((gram_matrix(f) - g).pow(2).sum(dim=(1, 2)).mean() for f, g in zip(features, target_grams))


# ----------------------------------------------------------------------------------- the loss network

def resolve_layers(config: CollectiveConfig, depth: int) -> tuple[int, int]:
    """The two points of a ``depth``-block recognizer read by the losses (module docstring)."""
    if config.feature_layers:
        if config.feature_layers[1] > depth:
            raise ValueError(f"feature_layers {config.feature_layers} go past the recognizer's {depth} blocks")
        return tuple(config.feature_layers)
    return (2, 4) if depth >= 4 else (depth - 1, depth)


@contextmanager
def feature_tap(recognizer: NormalizedRecognizer, layers: Sequence[int]) -> Iterator[list[Tensor]]:
    """While open, every forward of ``recognizer`` fills the yielded list with the token features
    ``Tensor[B, N, D]`` at ``layers`` (0 = patch embedding, k = block k), in the order given."""
    encoder = recognizer.classifier.encoder
    points = [encoder.embed, *encoder.blocks]
    features: list[Tensor] = [None] * len(layers)  # type: ignore[list-item]

    def hook_for(i: int):
        def hook(module: nn.Module, args: Any, output: Tensor) -> None:
            features[i] = output
        return hook

    handles = [points[k].register_forward_hook(hook_for(i)) for i, k in enumerate(layers)]
    try:
        yield features
    finally:
        for handle in handles:
            handle.remove()


def train_lossnet(config: CollectiveConfig, ctx: MethodContext) -> tuple[NormalizedRecognizer, dict[str, list[float]]]:
    """phi: the project's action recognizer trained with cross-entropy on the raw clips, then
    frozen. Returns it (eval mode, no gradients) and its per-epoch loss and training top-1."""
    lossnet = ctx.action_recognizer().train()
    optimizer = ctx.optimizer([lossnet], lr=config.lossnet_lr)
    history: dict[str, list[float]] = {"lossnet_ce": [], "lossnet_top1": []}
    for epoch in range(config.lossnet_epochs):
        total = correct = count = 0.0
        for video, action, _ in ctx.batches(epoch, f"collective lossnet {epoch + 1}/{config.lossnet_epochs}"):
            logits = lossnet(video)
            loss = action_loss(logits, action)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(action)
            correct += action_hits(logits, action).sum().item()
            count += len(action)
        history["lossnet_ce"].append(total / count)
        history["lossnet_top1"].append(correct / count)
    return lossnet.eval().requires_grad_(False), history


def noise_clip(config: CollectiveConfig, ctx: MethodContext) -> Tensor:
    """N: ``Tensor[1, C, T, H, W]`` uniform in [0, 1], the clips' geometry (``ctx.model_cfg``, which
    phi is built for), drawn on the CPU from ``noise_seed`` so that every device gets the same N."""
    m = ctx.model_cfg
    generator = torch.Generator().manual_seed(config.noise_seed)
    return torch.rand((1, m.in_chans, m.frames, m.image_size, m.image_size), generator=generator).to(ctx.device)


def collective_losses(anonymizer: nn.Module, lossnet: NormalizedRecognizer, layers: Sequence[int], video: Tensor,
                      action: Tensor, noise_grams: Sequence[Tensor], config: CollectiveConfig) -> dict[str, Tensor]:
    """The three terms and their weighted sum for one batch.

    Args:
        anonymizer: f. ``lossnet``: phi, frozen. ``layers``: the (style 1, style 2 = content) points.
        video: ``Tensor[B, 3, T, H, W]`` in [0, 1]; ``action``: ``Tensor[B]`` class ids (or ``Tensor[B, K]``
            multi-hot: :func:`~stprivacy.train.common.action_loss`).
        noise_grams: per layer, ``Tensor[D, D]``, the Gram matrices of phi's features of N.

    Returns:
        ``{"content", "style", "usability", "loss"}``, scalars; only "loss" is weighted.
    """
    with feature_tap(lossnet, layers) as features:
        with torch.no_grad():
            lossnet(video)
            content_target = features[-1]
        logits = lossnet(anonymizer(video))
        content = content_loss(features[-1], content_target)
        style = style_loss(features, noise_grams)
    usability = action_loss(logits, action)
    loss = config.lambda_content * content + config.lambda_style * style + config.lambda_usability * usability
    return {"content": content, "style": style, "usability": usability, "loss": loss}


def train(anonymizer: nn.Module, config: CollectiveConfig, ctx: MethodContext) -> dict[str, list[float]]:
    """Trains phi on the raw clips, freezes it, then trains f on the Collective loss."""
    lossnet, history = train_lossnet(config, ctx)
    layers = resolve_layers(config, len(lossnet.classifier.encoder.blocks))
    with torch.no_grad(), feature_tap(lossnet, layers) as features:
        lossnet(noise_clip(config, ctx))
        noise_grams = [gram_matrix(f)[0] for f in features]
    optimizer = ctx.optimizer([anonymizer], lr=config.lr)
    anonymizer.train()
    for name in ("content", "style", "usability", "loss"):
        history[name] = []
    for epoch in range(config.epochs):
        sums = dict.fromkeys(("content", "style", "usability", "loss"), 0.0)
        count = 0
        # Epoch indices after phi's, so that f does not see phi's batch orders again.
        for video, action, _ in ctx.batches(config.lossnet_epochs + epoch,
                                            f"collective transform {epoch + 1}/{config.epochs}"):
            terms = collective_losses(anonymizer, lossnet, layers, video, action, noise_grams, config)
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            optimizer.step()
            for name, value in terms.items():
                sums[name] += value.item() * len(action)
            count += len(action)
        for name, value in sums.items():
            history[name].append(value / count)
    return history


register(LearnedMethod(
    name="collective",
    title="Collective",
    citation="Zhang et al., Collective protection: preventing sensitive inferences via integrative "
             "transformation, ICDM 2019 (and the authors' journal extension; code: github dalinzhang/SensePrivacy)",
    config_class=CollectiveConfig,
    build=build,
    train=train,
))
