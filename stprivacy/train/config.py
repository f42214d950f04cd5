"""``TrainConfig``: every knob of the three training phases, and the learning-rate schedule."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ..model.config import dataclass_from_dict, drop_removed_fields
from ..model.pretrained import is_timm_source, timm_model_name


ADVERSARIAL_SCOPES = ("pab", "all")
INITIALIZATION_SCOPES = ("all", "sparsifier")
PRIVACY_ADVERSARIES = ("negative_bce", "entropy")  # stprivacy.train.common.privacy_adversary_loss


@dataclass
class TrainConfig:
    """The three phases of paper §3.4 (initialization, adversarial, evaluation).

    Attributes:
        dataset: a name known to ``stprivacy.train.data_factory.build_dataset``.
        dataset_kwargs: keyword arguments for that dataset (sizes, root directory, ...).
        pretrained: the ImageNet ViT that initializes the anonymizer and the phase-1/2
            recognizers, inflated to video (paper §4.3): ``"timm:NAME"`` (e.g.
            ``"timm:deit_small_patch16_224"``, fetched through timm, the ``stpriv[timm]`` extra) or a
            local checkpoint file (timm / DeiT layout, .safetensors or .pth; works offline);
            empty = random init. See ``stprivacy.model.pretrained``.
        batch_size: videos per step.
        base_lr: the learning rate at batch 512; the used peak is ``base_lr * batch_size / 512``.
        min_lr_ratio: the cosine schedule ends at ``peak * min_lr_ratio``.
        warmup_epochs: linear warm-up at the start of every phase (may be fractional).
        weight_decay: AdamW decoupled weight decay, on matrices only (not on biases or norms).
        grad_clip: max global gradient norm (0 = no clipping).
        init_epochs, adv_epochs, eval_epochs: epochs of the three phases (paper: 80 / 40 / 80).
        reconstruction_epochs: a start for an anonymizer without ``pretrained`` weights (stpriv's,
            0 = none, the paper's schedule): before phase 1, the whole anonymizer learns for this
            many epochs to reproduce its training videos (mean squared error, every tubelet kept,
            the predictors unused), at the run's learning rate and schedule. Why: the paper's PAB
            decodes from ImageNet ViT-S features, which carry the pixels; from random weights its
            pixel head is a random projection, and at the demo's scale phase 1 then does not learn
            the action (its loss stays at ln 4; benchmarks/paper_row_start.py, docs/demo_results.md).
        sparsity_hold_epochs, sparsity_ramp_epochs: phase 1's warm-up of the sparsification:
            the predictors have no say for ``sparsity_hold_epochs``, then take over linearly
            over ``sparsity_ramp_epochs``. With the model's "gumbel_topk" sampler the hold keeps
            uniformly random subsets of the deployment size (the predictors' scores are scaled
            by 0, then by 0 -> 1 during the ramp); with "gumbel" nothing is dropped during the
            hold, and the keep-ratio target falls from 1 to ``alpha`` during the ramp. Why: a
            predictor trained from step 0 against a recognizer that is still at chance, or
            that never saw a masked video, learns to drop the actor (whose tubelets make the
            early recognizer's mistakes confident) and never recovers (docs/demo_results.md).
            0 and 0: the paper's schedule (its recognizers start from pretrained weights).
        backbone_lr_ratio: the anonymizer's parameters other than its keep predictors learn at
            ``min(lr, peak_lr * backbone_lr_ratio)`` while the predictors follow the schedule
            (the release's ``base_multi``, 0.1 there); 1 = one rate for all.
        predictor_warmup_epochs: the anonymizer's backbone learning rate is 0 for this many
            epochs at the start of each anonymizer phase: only the predictors learn (the
            release's ``warming_up_step``).
        layer_decay: layer-wise learning-rate decay of the anonymizer (BEiT's, as in the
            release): layer ``i`` of ``n`` blocks learns at ``layer_decay ** (n + 1 - i)`` times
            the rate; 1 = none.
        initialization_trains: what of the anonymizer phase 1 updates. "all" (the paper): every
            parameter. "sparsifier": everything but the anonymization block, which stays as
            initialized; with ``STPrivacyConfig.pab_residual`` that is the identity on kept
            tubelets, so phase 1 trains the predictors on the sparsified video itself. Why: a PAB
            trained in phase 1 can carry the action into the kept tubelets from tubelets the first
            blocks saw before any drop, and the predictors then need not keep the actor
            (docs/demo_results.md). Needs ``pab_residual`` (a random PAB would be noise).
        adversarial_trains: what of the anonymizer the adversarial phase updates. "pab": only the
            anonymization block (its transformer blocks, LayerNorm and pixel head); the tokenizer,
            the PSBs and their predictors stay as phase 1 left them, as the release's
            ``freeze_sparse_blocks_module_selection`` sets it (everything before block 10 and
            the score predictors frozen). "all": every anonymizer parameter.
        lambda_action, lambda_privacy: the weights of the adversarial objective (paper: 0.5).
        privacy_adversary: "negative_bce" (the paper's ``- lambda_P L_privacy``) or "entropy"
            (maximize the privacy recognizer's per-attribute entropy, bounded, a common
            stabilization in adversarial anonymization); see
            ``stprivacy.train.common.privacy_adversary_loss``.
        lambda_filter: the filter prior of the adversarial phase, with ``STPrivacyConfig.pab_filter``:
            the anonymizer's loss gains ``- lambda_filter`` times the mean gate (desaturation and
            blur) over the kept tubelets, so the filter anonymizes wherever the action does not pay
            for it; 0 = none (the paper has no filter). Why: the adversary moves a gate only once it
            reads what the gate hides, and then in proportion to how much it reads, so a gate halfway
            closed stops where a fresh attacker still reads the half that is left (on the benchmark
            the actor's blur settled at 0.01-0.88 and its face marking was read at AP 100 on six
            seeds of ten, even with ``lambda_privacy=2``); the prior closes every gate the action
            does not hold open (docs/demo_results.md).
        privacy_steps: updates of the privacy recognizer per batch of phase 2 (the first with
            the action recognizer's, the rest alone, on the same anonymized clips); 1 = the paper's
            one each. Why: the phase's adversary is trained for a few epochs on a moving target,
            while the protocol's attackers train from scratch on the final output for
            ``eval_epochs``; an anonymizer is only pushed to hide what its own adversary reads,
            and cues that take the attackers longer to learn (on the benchmark, the face marking
            once the tint is gone) are never read by a one-step adversary
            (docs/demo_results.md). More steps per batch is the critic-steps remedy of GAN training;
            the demo's recipe takes 4, with which the adversary reads the face and the filter of
            ``STPrivacyConfig.pab_filter`` starts to blur the actor.
        recognizer: overrides of ``VideoClassifier.from_config`` for every recognizer (e.g.
            ``{"depth": 2, "embed_dim": 64, "num_heads": 4}``); empty = the anonymizer's sizes.
        eval_keep_ratios: deployment keep ratios evaluated in the evaluation phase (paper §4.6);
            empty = only the model's ``alpha``.
        validation_fraction: the share of the training videos that no attacker of the evaluation
            protocol trains on: scored on them, they choose per row which attacker's test numbers
            are reported (``stprivacy.attack.verdict.split_validation``), so no choice is made on
            the test set. Anonymizers trained by ``stprivacy demo`` and ``stprivacy train`` leave
            them out too.
        seed: seeds weights, batch order and Gumbel noise; a CPU run with the same seed (and the
            same world size x grad_accum_steps) repeats bit for bit.
        device: "cpu", "cuda", "cuda:1", ... (under torchrun each process takes cuda:LOCAL_RANK).
        num_workers: DataLoader workers.
        progress: show tqdm progress bars.
        grad_accum_steps: micro-batches per optimizer step; ``batch_size`` is the global batch
            and must be divisible by ``world size * grad_accum_steps``.
        precision: "fp32", or "bf16" for bfloat16 autocast (CPU and CUDA; weights stay fp32).
        compile: wrap the trained modules in ``torch.compile``.
        log: "none", "csv" (``metrics.csv`` in the run directory) or "tensorboard".
        log_every: optimizer steps between logged rows.
        checkpoint_every: optimizer steps between checkpoints (``last.pt``) inside an epoch;
            0 = at the end of every epoch only.
    """

    dataset: str = "synthetic"
    dataset_kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained: str = ""
    batch_size: int = 32
    base_lr: float = 1e-3
    min_lr_ratio: float = 0.01
    warmup_epochs: float = 0.0
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    init_epochs: int = 80
    adv_epochs: int = 40
    eval_epochs: int = 80
    reconstruction_epochs: int = 0
    sparsity_hold_epochs: float = 0.0
    sparsity_ramp_epochs: float = 0.0
    backbone_lr_ratio: float = 1.0
    predictor_warmup_epochs: float = 0.0
    layer_decay: float = 1.0
    initialization_trains: str = "all"
    adversarial_trains: str = "pab"
    lambda_action: float = 0.5
    lambda_privacy: float = 0.5
    privacy_adversary: str = "negative_bce"
    lambda_filter: float = 0.0
    privacy_steps: int = 1
    recognizer: dict[str, Any] = field(default_factory=dict)
    eval_keep_ratios: list[float] = field(default_factory=list)
    validation_fraction: float = 0.2
    seed: int = 0
    device: str = "cpu"
    num_workers: int = 0
    progress: bool = True
    grad_accum_steps: int = 1
    precision: str = "fp32"
    compile: bool = False
    log: str = "none"
    log_every: int = 10
    checkpoint_every: int = 0

    def __post_init__(self) -> None:
        for name in ("batch_size", "grad_accum_steps", "log_every", "privacy_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("init_epochs", "adv_epochs", "eval_epochs", "reconstruction_epochs", "num_workers", "seed", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        for name in ("base_lr", "weight_decay", "grad_clip", "warmup_epochs", "sparsity_hold_epochs",
                     "sparsity_ramp_epochs", "lambda_action", "lambda_privacy", "predictor_warmup_epochs",
                     "lambda_filter"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        for name in ("backbone_lr_ratio", "layer_decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {value!r}")
        if isinstance(self.validation_fraction, bool) or not isinstance(self.validation_fraction, (int, float)) \
                or not 0.0 < self.validation_fraction <= 0.5:
            raise ValueError(f"validation_fraction must be in (0, 0.5], got {self.validation_fraction!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.initialization_trains not in INITIALIZATION_SCOPES:
            raise ValueError(f"initialization_trains must be one of {INITIALIZATION_SCOPES}, "
                             f"got {self.initialization_trains!r}")
        if self.adversarial_trains not in ADVERSARIAL_SCOPES:
            raise ValueError(f"adversarial_trains must be one of {ADVERSARIAL_SCOPES}, got {self.adversarial_trains!r}")
        if self.privacy_adversary not in PRIVACY_ADVERSARIES:
            raise ValueError(f"privacy_adversary must be one of {PRIVACY_ADVERSARIES}, got {self.privacy_adversary!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
        if self.log not in ("none", "csv", "tensorboard"):
            raise ValueError(f"log must be 'none', 'csv' or 'tensorboard', got {self.log!r}")
        for name in ("compile", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.pretrained, str):
            raise TypeError(f"pretrained must be a string (a file path or 'timm:NAME'), got {self.pretrained!r}")
        if is_timm_source(self.pretrained):
            timm_model_name(self.pretrained)  # an empty NAME fails here; timm itself is needed only to load
        if not isinstance(self.dataset, str) or not isinstance(self.device, str):
            raise TypeError(f"dataset and device must be strings, got {self.dataset!r} and {self.device!r}")
        try:
            torch.device(self.device)
        except RuntimeError as e:
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:<index>', got {self.device!r}") from e
        if self.batch_size % self.grad_accum_steps:
            raise ValueError(f"batch_size ({self.batch_size}) must be divisible by grad_accum_steps "
                             f"({self.grad_accum_steps})")
        if not isinstance(self.dataset_kwargs, dict) or not isinstance(self.recognizer, dict):
            raise TypeError("dataset_kwargs and recognizer must be dicts")
        self.eval_keep_ratios = [float(r) for r in self.eval_keep_ratios]
        if any(not 0.0 < r <= 1.0 for r in self.eval_keep_ratios):
            raise ValueError(f"eval_keep_ratios must be in (0, 1], got {self.eval_keep_ratios}")

    @property
    def peak_lr(self) -> float:
        """The linear scaling rule: ``base_lr * batch_size / 512``."""
        return self.base_lr * self.batch_size / 512

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ValueError naming them. The fields of
        :data:`REMOVED_TRAIN_FIELDS` are read where they were off, so old checkpoints load."""
        if isinstance(data, dict):
            data = drop_removed_fields(data, REMOVED_TRAIN_FIELDS)
        return dataclass_from_dict(cls, data, "train config")


# Fields of earlier versions (see stprivacy.model.config.drop_removed_fields): probes' options that
# did not help (docs/demo_results.md). The adversary kind "uniform" and the scope
# "pab_and_predictors" went with them; __post_init__ names the kinds and scopes left.
REMOVED_TRAIN_FIELDS = {
    "adversarial_lr_scale": (1.0, "a probe's learning-rate scale of the anonymizer in phase 2, removed (it did "
                                  "not help, and the backbone's cap held it near x1; docs/demo_results.md)"),
    "privacy_restart_epochs": (0, "a probe's restarts of the phase-2 privacy recognizer, removed (they did not "
                                  "help; docs/demo_results.md)"),
}


def get_lr(step: int, total_steps: int, peak_lr: float, warmup_steps: int = 0, min_lr: float = 0.0) -> float:
    """Linear warm-up to ``peak_lr`` over ``warmup_steps``, then cosine decay to ``min_lr`` at
    ``total_steps`` (and ``min_lr`` after it)."""
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (peak_lr - min_lr)


def sparsity_warmup(step: int, hold_steps: int, ramp_steps: int) -> float:
    """How much of phase 1's sparsification warm-up remains: 1 for ``hold_steps`` steps, then
    linearly down to 0 over ``ramp_steps``, then 0 (``TrainConfig.sparsity_hold_epochs``)."""
    if step < hold_steps:
        return 1.0
    if step >= hold_steps + ramp_steps:
        return 0.0
    return 1.0 - (step - hold_steps + 1) / ramp_steps
