"""SPAct (Dave, Chen, Shah, "SPAct: Self-supervised Privacy Preservation for Action Recognition",
CVPR 2022): a frame-wise UNet anonymizer trained against a *self-supervised* privacy model.

The recipe, as the paper and its code (github DAVEISHAN/SPAct) train it:

* **f_A, the anonymizer**: a UNet (conv3x3-BN-ReLU x2 blocks, max-pool downs, bilinear ups with
  concatenated skips, 1x1 conv to RGB, sigmoid) applied to every frame independently. It starts as
  the identity: trained to reconstruct its input with an L1 loss.
* **f_T, the target model**: an action recognizer on ``f_A(X)``, cross-entropy on the action.
* **f_B, the privacy model**: a 2D frame encoder and an MLP projection head, L2-normalised, trained
  with NT-Xent (SimCLR, temperature 0.1): the two augmented views of one frame are positives, the
  other views of the batch negatives. It never sees a privacy label; it is pretrained on
  ``f_A(views)`` before the min-max.
* **Min-max**, alternating iterations: the first (third, ...) updates f_A only, with
  ``L_A = -NT-Xent(f_B(f_A(view1)), f_B(f_A(view2))) + w * CE(f_T(f_A(X)), y)``, ``w = 1``, f_B and
  f_T in eval mode; the next updates f_B (min NT-Xent) and f_T (min CE) with f_A fixed (eval mode).
  Maximising the contrastive loss makes frames hard to tell apart from each other, which is what
  removes identity-like appearance without any privacy label; the CE keeps the action.

The privacy labels the batches carry are never read here (a test checks that permuting them gives
the same anonymizer bit for bit); they only serve the evaluation's attackers.

Choices
-------
Where the paper is silent or our scale forces a change (defaults = the embedded benchmark's 8 x 32 x
32 clips, 768 training videos, batch 16). Measured cost of one epoch of each stage on one
thread: identity 4.9 s, f_B pretraining 1.6 s, f_T pretraining 4.3 s, min-max 9.2 s, so about
120 s for the defaults on one thread (an estimated 85-90 s on two idle cores):

* **UNet size**: ``width=8, depth=2`` (widths 8-16, bottleneck 16 at 8 x 8) instead of 64 and 4
  downs (17.3 M parameters): 32 px frames would allow 5 downs, but f_A runs on every frame of every
  clip in every step, and the demo's 2-core budget (measured: a UNet of width 16 and depth 3 costs
  3x as much per step) needs a small network. Paper scale: ``width=64, depth=4`` (112 px frames;
  H and W must be divisible by ``2 ** depth``).
* **Identity initialisation**: on the training videos' own frames (the paper used VISPR images and
  1% of UCF101), ``init_frames_per_clip=4`` random frames of each clip per batch (the paper trains
  it on images; frames of one clip are redundant, so half of them halve the cost), L1,
  ``init_epochs=4`` (paper 5) at Adam ``init_lr=3e-3`` (paper 1e-3, over far more steps: measured
  on the benchmark's frames, 200 steps at 1e-3 leave an L1 error of 0.058, at 3e-3 of 0.042).
* **f_T** is the project's ViT action recognizer (``ctx.action_recognizer()``; the paper: R3D-18),
  pretrained on ``f_A(X)`` before the min-max as the paper's was, for ``target_epochs=8`` (384
  steps): measured on the benchmark, it stays at chance for about 130 steps, then learns the
  motion; a min-max against an f_T at chance has no action to keep.
* **f_B**: a 4-stage CNN (conv3x3-BN-ReLU, strides 1-2-2-2, widths ``encoder_width`` x 1-2-4-4,
  global average pool) + MLP ``-> projection_hidden -> projection_dim`` (the paper: ResNet-50 + MLP
  2048-2048-128). Paper-like scale: ``encoder_width=64, projection_hidden=2048, projection_dim=128``.
* **Contrastive batch**: ``frames_per_clip`` random frames of each clip of the action batch (the
  paper draws a separate batch of 64 VISPR images). One frame per clip by default: two frames of
  one clip share actor, layout and attributes, so as each other's negatives they would teach f_B
  the actor's motion phase rather than appearance.
* **Views**: random resized crop (side ``crop_min``-1, bilinear), horizontal flip (p 0.5), weak
  colour jitter (brightness, contrast, saturation, each with probability ``jitter_prob`` and
  factor ``1 +- jitter``, the code's 0.15 / 0.1), random greyscale (``gray_prob``, the code's
  0.1), random erasing of a black box with sides ``erase_max / 2 .. erase_max`` of the frame
  (``erase_prob``, the code's 19 px of 112 with p 0.25). The code's hue shift and gamma are left
  out (small, and hue needs an HSV round trip). Batched tensor ops with a seeded generator.
* **Learning rates and epochs**: the paper runs Adam 1e-4 on all three models for up to 300
  epochs; our min-max has ``epochs=6`` (288 batches: 144 updates of f_A, 144 of f_B and f_T), so
  ``lr=1e-3`` for all three (an Adam step moves a weight by about the learning rate: 144 steps at
  1e-4 could move f_A's weights by 0.014 at most, hardly away from the identity). f_B
  (``privacy_epochs=6``; the paper's f_B had 160 SSL epochs) and f_T pretrain at
  ``pretrain_lr=1e-3``. Paper scale: ``lr=1e-4`` and as many epochs as the budget allows.
* **Optimizers**: fresh Adam optimizers for the min-max (the paper's code loads the pretrained
  models and builds new optimizers).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..model import STPrivacyConfig
from ..train.common import action_loss
from .learned import LearnedMethod, MethodConfig, MethodContext, register

# RGB -> luma weights (ITU-R 601, what torchvision's rgb_to_grayscale uses).
_LUMA = (0.299, 0.587, 0.114)


@dataclass
class SPActConfig(MethodConfig):
    """SPAct's sizes and schedule (defaults: the embedded benchmark; see the module's "Choices").

    Attributes:
        width, depth: the UNet's first width and number of downsamplings (paper: 64 and 4).
        init_epochs, init_lr: the identity (L1 reconstruction) initialisation of the anonymizer.
        init_frames_per_clip: frames of each clip in a batch of that initialisation.
        encoder_width, projection_hidden, projection_dim: f_B's CNN width and MLP head sizes.
        temperature: NT-Xent's temperature (paper: 0.1).
        privacy_epochs, target_epochs: pretraining epochs of f_B (NT-Xent) and f_T (CE) on f_A(X).
        pretrain_lr: Adam learning rate of those pretrainings.
        epochs: min-max epochs (batches alternate: one updates f_A, the next f_B and f_T).
        lr: Adam learning rate of all three models in the min-max (paper: 1e-4).
        action_weight: w in ``-NT-Xent + w * CE`` (paper: 1).
        frames_per_clip: frames of each clip in a contrastive batch.
        crop_min: smallest side of the random resized crop, as a fraction of the frame.
        jitter, jitter_prob: colour-jitter factor range ``1 +- jitter`` and probability of each op.
        gray_prob, erase_prob: probabilities of greyscale and of random erasing.
        erase_max: largest side of the erased box, as a fraction of the frame.
    """

    width: int = 8
    depth: int = 2
    init_epochs: int = 4
    init_lr: float = 3e-3
    init_frames_per_clip: int = 4
    encoder_width: int = 16
    projection_hidden: int = 128
    projection_dim: int = 64
    temperature: float = 0.1
    privacy_epochs: int = 6
    target_epochs: int = 8
    pretrain_lr: float = 1e-3
    epochs: int = 6
    lr: float = 1e-3
    action_weight: float = 1.0
    frames_per_clip: int = 1
    crop_min: float = 0.6
    jitter: float = 0.1
    jitter_prob: float = 0.15
    gray_prob: float = 0.1
    erase_prob: float = 0.25
    erase_max: float = 0.17

    def __post_init__(self) -> None:
        for name in ("width", "depth", "encoder_width", "projection_hidden", "projection_dim", "frames_per_clip",
                     "init_frames_per_clip"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SPActConfig.{name} must be an int >= 1, got {value!r}")
        for name in ("init_epochs", "privacy_epochs", "target_epochs", "epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"SPActConfig.{name} must be an int >= 0, got {value!r}")
        # (field, what is expected, test of a real number)
        checks = [(name, "a positive finite number", lambda v: 0 < v < math.inf)
                  for name in ("init_lr", "pretrain_lr", "lr", "temperature")]
        checks += [(name, "a probability in [0, 1]", lambda v: 0 <= v <= 1)
                   for name in ("jitter_prob", "gray_prob", "erase_prob")]
        checks += [("action_weight", "a finite number >= 0", lambda v: 0 <= v < math.inf),
                   ("crop_min", "in (0, 1]", lambda v: 0 < v <= 1), ("jitter", "in [0, 1)", lambda v: 0 <= v < 1),
                   ("erase_max", "in (0, 1]", lambda v: 0 < v <= 1)]
        for name, expected, ok in checks:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
                raise ValueError(f"SPActConfig.{name} must be {expected}, got {value!r}")



# ----------------------------------------------------------------------------------------------
# f_A: the UNet anonymizer


class DoubleConv(nn.Sequential):
    """(conv3x3 -> BN -> ReLU) x 2; the convolutions have no bias (BN follows)."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None):
        mid = mid_channels or out_channels
        super().__init__(
            nn.Conv2d(in_channels, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
        )


class Up(nn.Module):
    """Bilinear 2x upsampling, concatenation with the skip, then a DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.conv = DoubleConv(in_channels, out_channels, in_channels // 2)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNetAnonymizer(nn.Module):
    """SPAct's f_A: a UNet applied to every frame of a clip independently.

    With ``widths = width * 2**i``: an input DoubleConv to ``width``, ``depth`` max-pool + DoubleConv
    downs (the last one stays at the previous width, as in the bilinear UNet), ``depth`` ups that
    halve the width, a 1x1 convolution to RGB and a sigmoid.

    Args:
        width: channels of the first block (paper 64).
        depth: number of downsamplings (paper 4); frames must be divisible by ``2 ** depth``.
    """

    def __init__(self, width: int = 64, depth: int = 4):
        super().__init__()
        self.width, self.depth = width, depth
        widths = [width * 2 ** i for i in range(depth + 1)]
        self.inc = DoubleConv(3, widths[0])
        self.downs = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), DoubleConv(widths[i], widths[i + 1] if i < depth - 1 else widths[i]))
            for i in range(depth))
        self.ups = nn.ModuleList(Up(2 * widths[j], widths[max(j - 1, 0)]) for j in reversed(range(depth)))
        self.outc = nn.Conv2d(widths[0], 3, 1)

    def check_size(self, height: int, width: int) -> None:
        multiple = 2 ** self.depth
        if height % multiple or width % multiple:
            raise ValueError(f"SPAct's UNet of depth {self.depth} needs frames whose height and width are "
                             f"multiples of {multiple}, got {height}x{width}")

    def frames(self, images: Tensor) -> Tensor:
        """``Tensor[N, 3, H, W]`` in [0, 1] -> ``Tensor[N, 3, H, W]`` in [0, 1]."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"frames must be Tensor[N, 3, H, W], got {tuple(images.shape)}")
        self.check_size(*images.shape[-2:])
        x = self.inc(images)
        skips = [x]
        for down in self.downs:
            x = down(x)
            skips.append(x)
        skips.pop()  # the bottleneck is x itself
        for up in self.ups:
            x = up(x, skips.pop())
        return torch.sigmoid(self.outc(x))

    def forward(self, video: Tensor) -> Tensor:
        """``Tensor[B, 3, T, H, W]`` in [0, 1] -> ``Tensor[B, 3, T, H, W]`` in [0, 1], frame by frame."""
        if video.dim() != 5 or video.shape[1] != 3:
            raise ValueError(f"video must be Tensor[B, 3, T, H, W], got {tuple(video.shape)}")
        B, C, T, H, W = video.shape
        out = self.frames(video.transpose(1, 2).reshape(B * T, C, H, W))
        return out.reshape(B, T, C, H, W).transpose(1, 2)


def build(config: SPActConfig, model_cfg: STPrivacyConfig) -> UNetAnonymizer:
    """The untrained anonymizer for ``model_cfg``'s clips (checks the frame size against the depth)."""
    multiple = 2 ** config.depth
    if model_cfg.image_size % multiple:
        raise ValueError(f"SPActConfig.depth={config.depth} needs image_size divisible by {multiple}, "
                         f"got {model_cfg.image_size}")
    return UNetAnonymizer(config.width, config.depth)


# ----------------------------------------------------------------------------------------------
# f_B: the self-supervised privacy model


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class FrameEncoder(nn.Module):
    """f_B: a small 2D CNN and an MLP projection head; L2-normalised embeddings.

    Args:
        width: channels of the first stage (stages: width, 2 width, 4 width, 4 width).
        hidden, out: the projection head's hidden and output sizes.
    """

    def __init__(self, width: int = 16, hidden: int = 128, out: int = 64):
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn_relu(3, width, 1), _conv_bn_relu(width, 2 * width, 2),
            _conv_bn_relu(2 * width, 4 * width, 2), _conv_bn_relu(4 * width, 4 * width, 2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(4 * width, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out))

    def forward(self, images: Tensor) -> Tensor:
        """``Tensor[N, 3, H, W]`` -> unit vectors ``Tensor[N, out]``."""
        return F.normalize(self.head(self.features(images)), dim=-1)


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """SimCLR's NT-Xent: each of the 2N embeddings must pick its partner among the other 2N - 1.

    Args:
        z1, z2: ``Tensor[N, D]``, unit vectors; row i of z1 and of z2 are views of one image.
        temperature: the similarities' divisor.

    Returns:
        The mean over the 2N anchors of ``-log softmax(sim / t)[partner]``, the anchor itself left out.
    """
    n = z1.shape[0]
    z = torch.cat([z1, z2])
    logits = z @ z.T / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(logits, partner)


def augment(images: Tensor, generator: torch.Generator, config: SPActConfig) -> Tensor:
    """One random view of each image, SPAct's SSL augmentations as batched tensor ops.

    Random resized crop (square fraction ``crop_min``-1 of the side, bilinear) with a horizontal
    flip (p 0.5) in one affine resampling; brightness, contrast and saturation (each with
    probability ``jitter_prob``, factor ``U(1 - jitter, 1 + jitter)``); greyscale (``gray_prob``);
    a black box (``erase_prob``, sides ``U(erase_max / 2, erase_max)`` of the frame, anywhere).

    Args:
        images: ``Tensor[N, 3, H, W]`` in [0, 1].
        generator: a CPU generator; its draws (not the device) fix the views.

    Returns:
        ``Tensor[N, 3, H, W]`` in [0, 1].
    """
    N, C, H, W = images.shape
    r = torch.rand(N, 16, generator=generator).to(images.device, images.dtype)
    # Crop + flip: output coordinate x maps to side * flip * x + centre (normalised coordinates).
    side = config.crop_min + (1 - config.crop_min) * r[:, 0]
    flip = torch.where(r[:, 1] < 0.5, -1.0, 1.0).to(images.dtype)
    theta = torch.zeros(N, 2, 3, device=images.device, dtype=images.dtype)
    theta[:, 0, 0], theta[:, 1, 1] = side * flip, side
    theta[:, 0, 2], theta[:, 1, 2] = (1 - side) * (2 * r[:, 2] - 1), (1 - side) * (2 * r[:, 3] - 1)
    grid = F.affine_grid(theta, [N, C, H, W], align_corners=False)
    x = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def factor(apply: Tensor, draw: Tensor) -> Tensor:
        jittered = 1 + config.jitter * (2 * draw - 1)
        return torch.where(apply < config.jitter_prob, jittered, torch.ones_like(draw)).view(N, 1, 1, 1)

    luma = torch.tensor(_LUMA, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    x = (x * factor(r[:, 4], r[:, 5])).clamp(0, 1)  # brightness
    mean = (x * luma).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    x = ((x - mean) * factor(r[:, 6], r[:, 7]) + mean).clamp(0, 1)  # contrast
    gray = (x * luma).sum(1, keepdim=True)
    x = ((x - gray) * factor(r[:, 8], r[:, 9]) + gray).clamp(0, 1)  # saturation
    gray = (x * luma).sum(1, keepdim=True).expand_as(x)
    x = torch.where((r[:, 10] < config.gray_prob).view(N, 1, 1, 1), gray, x)
    # Random erasing: a black box anywhere (it may run off the frame, as in the paper's code).
    box_h = (config.erase_max * H * (0.5 + 0.5 * r[:, 12])).view(N, 1, 1)
    box_w = (config.erase_max * W * (0.5 + 0.5 * r[:, 13])).view(N, 1, 1)
    top, left = (r[:, 14] * H).view(N, 1, 1), (r[:, 15] * W).view(N, 1, 1)
    ys = torch.arange(H, device=images.device, dtype=images.dtype).view(1, H, 1)
    xs = torch.arange(W, device=images.device, dtype=images.dtype).view(1, 1, W)
    box = (ys >= top) & (ys < top + box_h) & (xs >= left) & (xs < left + box_w)
    erase = (r[:, 11] < config.erase_prob).view(N, 1, 1) & box
    return x.masked_fill(erase.unsqueeze(1), 0.0)


# ----------------------------------------------------------------------------------------------
# Training


def random_frames(video: Tensor, generator: torch.Generator, count: int) -> Tensor:
    """``count`` frames of every clip, drawn with replacement: ``Tensor[B, 3, T, H, W] -> Tensor[B * count,
    3, H, W]`` (the frames of clip b are rows ``b * count ... b * count + count - 1``)."""
    B, C, T, H, W = video.shape
    t = torch.randint(T, (B, count), generator=generator).to(video.device)
    rows = torch.arange(B, device=video.device).unsqueeze(1)
    return video.transpose(1, 2)[rows, t].reshape(B * count, C, H, W)


def contrastive_views(video: Tensor, generator: torch.Generator, config: SPActConfig) -> tuple[Tensor, Tensor]:
    """Two views of ``frames_per_clip`` random frames of every clip.

    Args:
        video: ``Tensor[B, 3, T, H, W]`` in [0, 1].

    Returns:
        Two ``Tensor[B * frames_per_clip, 3, H, W]``; row i of both is the same frame.
    """
    frames = random_frames(video, generator, config.frames_per_clip)
    return augment(frames, generator, config), augment(frames, generator, config)


class _Frozen:
    """Turns off the parameters' gradients of some modules inside a ``with`` (f_A's step needs
    gradients through f_B and f_T, not of their weights)."""

    def __init__(self, *modules: nn.Module):
        self.params = [p for m in modules for p in m.parameters() if p.requires_grad]

    def __enter__(self) -> None:
        for p in self.params:
            p.requires_grad_(False)

    def __exit__(self, *exc: object) -> None:
        for p in self.params:
            p.requires_grad_(True)


def anonymizer_step(anonymizer: UNetAnonymizer, encoder: FrameEncoder, target: nn.Module,
                    optimizer: torch.optim.Optimizer, video: Tensor, action: Tensor, views: tuple[Tensor, Tensor],
                    config: SPActConfig) -> tuple[float, float]:
    """The min-max's odd iteration: one update of f_A with ``-NT-Xent + w * CE``, f_B and f_T fixed
    in eval mode.

    Args:
        video: ``Tensor[B, 3, T, H, W]``; action: ``Tensor[B]`` class ids (or ``Tensor[B, K]`` multi-hot).
        views: two ``Tensor[N, 3, H, W]`` views of the same N frames (raw, before f_A).

    Returns:
        (NT-Xent, CE) before the update.
    """
    anonymizer.train(), encoder.eval(), target.eval()
    with _Frozen(encoder, target):
        ssl = nt_xent(encoder(anonymizer.frames(views[0])), encoder(anonymizer.frames(views[1])), config.temperature)
        ce = action_loss(target(anonymizer(video)), action)
        loss = -ssl + config.action_weight * ce
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
    optimizer.step()
    return ssl.item(), ce.item()


def privacy_step(anonymizer: UNetAnonymizer, encoder: FrameEncoder, optimizer: torch.optim.Optimizer,
                 views: tuple[Tensor, Tensor], config: SPActConfig) -> float:
    """One update of f_B (min NT-Xent) on the anonymized views, f_A fixed in eval mode; the loss."""
    anonymizer.eval(), encoder.train()
    with torch.no_grad():
        anonymized = anonymizer.frames(torch.cat(views))
    z = encoder(anonymized)
    loss = nt_xent(*z.chunk(2), config.temperature)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def target_step(anonymizer: UNetAnonymizer, target: nn.Module, optimizer: torch.optim.Optimizer, video: Tensor,
                action: Tensor) -> float:
    """One update of f_T (min CE) on ``f_A(video)``, f_A fixed in eval mode; the loss."""
    anonymizer.eval(), target.train()
    with torch.no_grad():
        anonymized = anonymizer(video)
    loss = action_loss(target(anonymized), action)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def _mean(values: list[float]) -> float:
    # An epoch of one batch has only one half of an alternation: the other half's mean is NaN.
    return sum(values) / len(values) if values else float("nan")


def train(anonymizer: UNetAnonymizer, config: SPActConfig, ctx: MethodContext) -> dict[str, list[float]]:
    """SPAct's three stages: identity initialisation of f_A, pretraining of f_B and f_T on f_A(X),
    then the alternating min-max. Reads the batches' videos and actions, never their privacy labels.

    Returns:
        Per-epoch means: ``identity_l1``; ``privacy_pretrain_ntxent``, ``target_pretrain_ce``; and of
        the min-max ``anonymizer_loss`` (``-NT-Xent + w CE``), ``anonymizer_ntxent``,
        ``anonymizer_ce`` (f_A's iterations) and ``privacy_ntxent``, ``target_ce`` (f_B's and f_T's).
    """
    history: dict[str, list[float]] = {name: [] for name in (
        "identity_l1", "privacy_pretrain_ntxent", "target_pretrain_ce", "anonymizer_loss", "anonymizer_ntxent",
        "anonymizer_ce", "privacy_ntxent", "target_ce")}
    generator = torch.Generator().manual_seed(ctx.cfg.seed)  # the frames and views drawn
    epoch_ids = iter(range(1 << 30))  # every epoch of every stage gets its own batch order

    optimizer = ctx.optimizer([anonymizer], config.init_lr)
    anonymizer.train()
    for _ in range(config.init_epochs):
        losses = []
        for video, _, _ in ctx.batches(next(epoch_ids), "spact identity"):
            frames = random_frames(video, generator, config.init_frames_per_clip)
            loss = F.l1_loss(anonymizer.frames(frames), frames)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        history["identity_l1"].append(_mean(losses))

    encoder = FrameEncoder(config.encoder_width, config.projection_hidden, config.projection_dim).to(ctx.device)
    optimizer = ctx.optimizer([encoder], config.pretrain_lr)
    for _ in range(config.privacy_epochs):
        losses = [privacy_step(anonymizer, encoder, optimizer, contrastive_views(video, generator, config), config)
                  for video, _, _ in ctx.batches(next(epoch_ids), "spact f_B pretraining")]
        history["privacy_pretrain_ntxent"].append(_mean(losses))

    target = ctx.action_recognizer()
    optimizer = ctx.optimizer([target], config.pretrain_lr)
    for _ in range(config.target_epochs):
        losses = [target_step(anonymizer, target, optimizer, video, action)
                  for video, action, _ in ctx.batches(next(epoch_ids), "spact f_T pretraining")]
        history["target_pretrain_ce"].append(_mean(losses))

    opt_a = ctx.optimizer([anonymizer], config.lr)
    opt_b, opt_t = ctx.optimizer([encoder], config.lr), ctx.optimizer([target], config.lr)
    iteration = 0
    for _ in range(config.epochs):
        ssl_a, ce_a, ssl_b, ce_t = [], [], [], []
        for video, action, _ in ctx.batches(next(epoch_ids), "spact min-max"):
            views = contrastive_views(video, generator, config)
            if iteration % 2 == 0:  # the paper's odd iterations (1st, 3rd, ...): f_A
                ssl, ce = anonymizer_step(anonymizer, encoder, target, opt_a, video, action, views, config)
                ssl_a.append(ssl), ce_a.append(ce)
            else:  # f_B and f_T, on the same f_A
                ssl_b.append(privacy_step(anonymizer, encoder, opt_b, views, config))
                ce_t.append(target_step(anonymizer, target, opt_t, video, action))
            iteration += 1
        history["anonymizer_ntxent"].append(_mean(ssl_a))
        history["anonymizer_ce"].append(_mean(ce_a))
        history["anonymizer_loss"].append(_mean([-s + config.action_weight * c for s, c in zip(ssl_a, ce_a)]))
        history["privacy_ntxent"].append(_mean(ssl_b))
        history["target_ce"].append(_mean(ce_t))
    anonymizer.eval()
    return history


register(LearnedMethod(
    name="spact", title="SPAct",
    citation="Dave, Chen, Shah: SPAct: Self-supervised Privacy Preservation for Action Recognition, CVPR 2022 "
             "(github DAVEISHAN/SPAct)",
    config_class=SPActConfig, build=build, train=train,
))
