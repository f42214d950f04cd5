"""``STPrivacyConfig``: every size and switch of the STPrivacy model, as one plain dataclass."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

TRAIN_SAMPLERS = ("gumbel", "gumbel_topk")
KEEP_GRADIENTS = ("straight_through", "score_function")


@dataclass
class STPrivacyConfig:
    """Geometry, sizes and switches of STPrivacy; the defaults are the authors' released ViT-S (paper §4.3).

    Videos are ``Tensor[B, in_chans, frames, image_size, image_size]`` with pixels in [0, 1];
    black (the value of a dropped tubelet) is 0. Tubelets are ``tubelet = (dT, dH, dW)``, so the
    model sees ``L = frames / dT`` time steps of ``N = (image_size / dH) * (image_size / dW)``
    tubelets each.

    Attributes:
        frames: frames per clip (T).
        image_size: frame height and width (square frames).
        in_chans: channels per frame.
        tubelet: ``(dT, dH, dW)``, the Conv3d kernel and stride of the tokenizer.
        embed_dim: token width D.
        num_heads: attention heads (must divide ``embed_dim``).
        depth: transformer blocks in each privacy sparsification block (PSB); its keep predictor
            runs after them.
        num_psb: number of PSBs.
        pab_depth: transformer blocks in the privacy anonymization block (PAB), the decoder after
            the last predictor. ``depth * num_psb + pab_depth`` blocks in all: the authors'
            release is one 12-block ViT-S with predictors after blocks 3, 6 and 9 and blocks
            10-12 + LayerNorm + Linear as the PAB (3 x 3 + 3).
        mlp_ratio: hidden width of the MLPs, as a multiple of ``embed_dim``.
        qkv_bias: whether the fused qkv projection has a bias.
        norm_eps: epsilon of the transformer blocks' and the PAB's LayerNorms (ViT-S: 1e-6).
        alpha: keep ratio per PSB; after PSB ``m`` (1-based) a fraction ``alpha ** m`` of each
            time step's tubelets is kept. 1 keeps everything (the "anonymization only" ablation).
        gumbel_tau: temperature of the Gumbel-softmax relaxation in training.
        train_sampler: how training decides which tubelets a PSB keeps. "gumbel": an independent
            hard Gumbel-softmax decision per tubelet (paper Eq. 6), the count steered towards
            ``alpha ** m`` by the sparsity loss. "gumbel_topk": exactly the count evaluation keeps,
            ``floor(N * alpha ** m)`` per time step, sampled by Gumbel-perturbed top-k among the
            tubelets still kept (``stpriv_ops.gumbel_topk``); training then sees the token
            budget of deployment, and the keep ratio cannot drift or collapse.
        keep_gradient: how the predictors learn from the loss. "straight_through" (the paper's,
            DynamicViT's): the hard decision's backward is the relaxed softmax's, so the
            predictors follow ``dL/dkeep`` taken at the sampled mask; that first-order slope says
            what re-weighting a tubelet does, not what dropping it does. "score_function": the
            sampled mask carries no gradient; the training loop adds the REINFORCE term
            ``(loss_i - baseline_i) * log p(mask_i)`` per clip (``STPrivacyOutput.keep_log_prob``,
            the exact log-probability of the sampled decisions), which is unbiased: sampled
            masks that kept what the recognizer needed become more likely.
        attn_eps: the smoothing term of the masked attention (DynamicViT's ``eps``).
        use_psb: False drops nothing and skips the predictors (an unpruned ViT encoder).
        use_pab: False outputs the sparsified input (kept tubelets' raw pixels, dropped ones
            black) instead of the decoder's output (the "sparsification only" ablation).
        pab_residual: the PAB's Linear predicts a *change* of each kept tubelet's input pixels
            (a skip connection from the input, the Linear zero-initialized, so the PAB starts as
            the identity on kept tubelets) instead of the pixels themselves. The anonymization
            then starts from the actor's own motion instead of from noise, which short runs from
            scratch need.
        pab_filter: with ``pab_residual``, the PAB outputs each kept tubelet filtered, how far
            desaturated and how far blurred decided from its token by two gates in [0, 1] (zero at
            initialization: the identity), instead of adding a pixel change from a head
            (:class:`~stprivacy.model.pab.TubeletFilter`). It can remove colour and fine detail
            and cannot write anything new. Measured on the benchmark (docs/demo_results.md): the
            adversarial phase learns to grey the actor exactly and to blur the other kept
            tubelets, which hides the tint on every seed, where no pixel head or global colour
            mixing did; it blurs the actor (the face marking) fully only with the filter prior
            ``TrainConfig.lambda_filter``. In the demo's recipe.
        pab_filter_sigma: standard deviation in pixels of the filter's Gaussian blur.
        normalize_input: standardize the pixels, ``(video - 0.45) / 0.225`` (the Kinetics
            statistics every recognizer here uses), before the tokenizer.
        blackening_gradient: in training, black out the dropped tubelets of the output by
            multiplying it with the live keep mask, so that the predictors also learn from the
            gradient of ``pixels * keep``. Off (the release's graph, whose training forward
            returns the decoded video and the mask apart): the output is blackened with the mask's
            value only, and the keep gradient comes only from where a dropped tubelet really is
            absent, the masked attention of the PSBs, the PAB and the mask-aware recognizers. The
            gradient of ``pixels * keep`` says how the loss changes when a tubelet gets brighter,
            not when it disappears; following it, predictors trained from scratch learned to
            drop the actor (docs/demo_results.md).

    ``pab_residual``, ``pab_filter``, ``normalize_input``, ``blackening_gradient``,
    ``train_sampler="gumbel_topk"`` and ``keep_gradient="score_function"`` are this project's
    additions, off in :meth:`vit_s` (the release has none of them);
    docs/demo_results.md has the measurements behind turning them on for short CPU runs.
    """

    frames: int = 16
    image_size: int = 112
    in_chans: int = 3
    tubelet: tuple[int, int, int] = (2, 16, 16)
    embed_dim: int = 384
    num_heads: int = 6
    depth: int = 3
    num_psb: int = 3
    pab_depth: int = 3
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    norm_eps: float = 1e-6
    alpha: float = 0.7
    gumbel_tau: float = 1.0
    train_sampler: str = "gumbel"
    keep_gradient: str = "straight_through"
    attn_eps: float = 1e-6
    use_psb: bool = True
    use_pab: bool = True
    pab_residual: bool = False
    pab_filter: bool = False
    pab_filter_sigma: float = 1.5
    normalize_input: bool = False
    blackening_gradient: bool = False

    def __post_init__(self) -> None:
        self.tubelet = tuple(self.tubelet)
        for name in ("frames", "image_size", "in_chans", "embed_dim", "num_heads", "depth", "num_psb", "pab_depth"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if len(self.tubelet) != 3 or any(isinstance(t, bool) or not isinstance(t, int) or t < 1 for t in self.tubelet):
            raise ValueError(f"tubelet must be three positive ints (dT, dH, dW), got {self.tubelet!r}")
        dt, dh, dw = self.tubelet
        if self.frames % dt:
            raise ValueError(f"frames ({self.frames}) must be divisible by the tubelet's time size dT ({dt})")
        if self.image_size % dh or self.image_size % dw:
            raise ValueError(
                f"image_size ({self.image_size}) must be divisible by the tubelet's spatial size "
                f"dH x dW ({dh} x {dw})"
            )
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads})")
        if self.embed_dim < 3:
            raise ValueError(f"embed_dim must be >= 3 (the predictor splits it in thirds), got {self.embed_dim}")
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha}")
        if not (self.gumbel_tau > 0 and math.isfinite(self.gumbel_tau)):
            raise ValueError(f"gumbel_tau must be a positive finite float, got {self.gumbel_tau}")
        if self.train_sampler not in TRAIN_SAMPLERS:
            raise ValueError(f"train_sampler must be one of {TRAIN_SAMPLERS}, got {self.train_sampler!r}")
        if not isinstance(self.blackening_gradient, bool):
            raise TypeError(f"blackening_gradient must be true or false, got {self.blackening_gradient!r}")
        if self.pab_filter and not self.pab_residual:
            raise ValueError("pab_filter filters the PAB's skip connection: it needs pab_residual=True")
        if not (self.pab_filter_sigma > 0 and math.isfinite(self.pab_filter_sigma)):
            raise ValueError(f"pab_filter_sigma must be a positive finite float, got {self.pab_filter_sigma}")
        if self.keep_gradient not in KEEP_GRADIENTS:
            raise ValueError(f"keep_gradient must be one of {KEEP_GRADIENTS}, got {self.keep_gradient!r}")
        if not self.mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        if not (self.norm_eps > 0 and math.isfinite(self.norm_eps)):
            raise ValueError(f"norm_eps must be a positive finite float, got {self.norm_eps}")
        if self.attn_eps < 0:
            raise ValueError(f"attn_eps must be >= 0, got {self.attn_eps}")

    # ---- derived geometry -------------------------------------------------------------------
    @property
    def time_steps(self) -> int:
        """L: tubelets along time."""
        return self.frames // self.tubelet[0]

    @property
    def grid_size(self) -> tuple[int, int]:
        """(h, w): tubelets along height and width."""
        return self.image_size // self.tubelet[1], self.image_size // self.tubelet[2]

    @property
    def tokens_per_step(self) -> int:
        """N: tubelets per time step."""
        h, w = self.grid_size
        return h * w

    @property
    def num_tokens(self) -> int:
        """L * N."""
        return self.time_steps * self.tokens_per_step

    @property
    def num_blocks(self) -> int:
        """Transformer blocks of the anonymizer: ``depth * num_psb + pab_depth`` (12 for ViT-S)."""
        return self.depth * self.num_psb + self.pab_depth

    @property
    def tubelet_pixels(self) -> int:
        """Values in one tubelet, ``in_chans * dT * dH * dW`` (the PAB's output width)."""
        return self.in_chans * math.prod(self.tubelet)

    def target_ratios(self, keep_ratio: float | None = None) -> list[float]:
        """Cumulative keep ratio after each PSB, ``ratio ** m`` for m = 1..num_psb."""
        ratio = self.alpha if keep_ratio is None else keep_ratio
        return [ratio ** (m + 1) for m in range(self.num_psb)] if self.use_psb else []

    # ---- presets and (de)serialization ------------------------------------------------------
    @classmethod
    def vit_s(cls, **overrides: Any) -> STPrivacyConfig:
        """The authors' released model: one 12-block ViT-S (D=384, 6 heads, LayerNorm eps 1e-6),
        16 x 112 x 112 clips, tubelet 2x16x16; blocks 1-3, predictor, 4-6, predictor, 7-9,
        predictor, then blocks 10-12 + LayerNorm + Linear decode the kept tubelets (the PAB)."""
        return cls(**overrides)

    @classmethod
    def small(cls, **overrides: Any) -> STPrivacyConfig:
        """A model that trains on 2 CPU cores in minutes: 8 x 32 x 32 clips, 4 x 16 tubelets, D=96."""
        preset = dict(
            frames=8, image_size=32, tubelet=(2, 8, 8), embed_dim=96, num_heads=3,
            depth=1, num_psb=3, pab_depth=2, mlp_ratio=2.0,
        )
        preset.update(overrides)
        return cls(**preset)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (the tubelet as a list)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["tubelet"] = list(self.tubelet)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> STPrivacyConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ValueError naming them. The keys of
        earlier versions are read too (:func:`upgrade_model_dict`), so old checkpoints load."""
        return dataclass_from_dict(cls, upgrade_model_dict(data), "data")


# Fields of earlier versions: (the value that meant "off", why it is gone). A config or checkpoint
# that has one at that value loads as if it were absent; at any other value it is refused by name.
REMOVED_MODEL_FIELDS = {
    "pab_color_skip": (False, "a probe's colour mixing on the PAB's skip connection, removed (it did not "
                              "learn to hide the tint; docs/demo_results.md)"),
}


def upgrade_model_dict(data: Any) -> Any:
    """A model config dict of an earlier version in today's fields: ``detach_blackening: b`` is
    ``blackening_gradient: not b`` (the old name said the opposite, and the old default blackened
    with gradient), and the fields of :data:`REMOVED_MODEL_FIELDS` are dropped where they were off.
    Anything else is returned as it is (``from_dict`` checks it)."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    if "detach_blackening" in data:
        if "blackening_gradient" in data:
            raise ValueError("detach_blackening was renamed blackening_gradient (with the opposite meaning): "
                             "give only blackening_gradient")
        detach = data.pop("detach_blackening")
        if not isinstance(detach, bool):
            raise ValueError(f"detach_blackening (now blackening_gradient) must be true or false, got {detach!r}")
        data["blackening_gradient"] = not detach
    return drop_removed_fields(data, REMOVED_MODEL_FIELDS)


def drop_removed_fields(data: dict[str, Any], removed: dict[str, tuple[Any, str]]) -> dict[str, Any]:
    """``data`` without the ``removed`` fields that hold their "off" value; ValueError naming a
    removed field set to anything else (a run that used it cannot be repeated)."""
    for name, (off, why) in removed.items():
        if name in data:
            if data[name] != off or isinstance(data[name], bool) != isinstance(off, bool):
                raise ValueError(f"{name}={data[name]!r} is no longer supported: {why}")
            data = {k: v for k, v in data.items() if k != name}
    return data


def dataclass_from_dict(cls: type, data: Any, name: str) -> Any:
    """``cls(**data)`` for a config dataclass, refusing a non-dict or unknown keys by name
    (a typo in a config file must not be silently ignored)."""
    if not isinstance(data, dict):
        raise TypeError(f"{name} must be a dict, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {unknown}; expected a subset of {sorted(known)}")
    return cls(**data)
