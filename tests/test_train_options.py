"""Options for real runs: seeded reproducibility, bf16 autocast, gradient clipping, gradient
accumulation, CSV / TensorBoard logs, torch.compile."""
from __future__ import annotations

import dataclasses
import os

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from stprivacy.attack.verdict import split_validation
from stprivacy.data.video_dataset import collate_videos
from stprivacy.model import STPrivacy, STPrivacyConfig
from stprivacy.train import (TrainConfig, build_dataset, load_checkpoint, load_latest, train_anonymizer,
                             train_initialization)
from stprivacy.train.distributed import ResumableBatches
from stprivacy.train.common import backbone_lr, clip_and_step, make_optimizer, make_recognizer, set_lr
from stprivacy.train.run_log import read_csv
from train_fixtures import TINY_MODEL, TINY_TRAIN, one_thread

_one_thread = pytest.fixture(autouse=True)(one_thread)

MODEL = STPrivacyConfig.small(**{k: v for k, v in TINY_MODEL.items() if k != "preset"})


def _cfg(**overrides) -> TrainConfig:
    return TrainConfig.from_dict({**TINY_TRAIN, **overrides})


def _data(cfg: TrainConfig):
    geometry = {"frames": MODEL.frames, "image_size": MODEL.image_size, "tubelet": MODEL.tubelet}
    return build_dataset(cfg.dataset, "train", geometry, **cfg.dataset_kwargs)


def _run(tmp_path, name, model_cfg=MODEL, **overrides):
    cfg = _cfg(**overrides)
    data = _data(cfg)
    model, history = train_anonymizer(model_cfg, cfg, data, out_dir=tmp_path / name, num_classes=data.num_classes,
                                      num_attributes=data.num_attributes)
    return model, history, read_csv(tmp_path / name / "metrics.csv") if cfg.log == "csv" else None


def test_same_seed_same_losses_other_seed_other_losses(tmp_path):
    a, _, log_a = _run(tmp_path, "a", seed=3)
    b, _, log_b = _run(tmp_path, "b", seed=3)
    _, _, log_c = _run(tmp_path, "c", seed=4, adv_epochs=0)
    assert log_a == log_b  # every logged value of every step, bit for bit
    for name, tensor in a.state_dict().items():
        assert torch.equal(tensor, b.state_dict()[name]), name
    assert log_a[("initialization", "loss_action")] != log_c[("initialization", "loss_action")]
    assert len(log_a[("adversarial", "loss_privacy")]) == 2  # 16 videos outside validation / batch 8, log_every 1


def test_gradient_accumulation_equals_the_full_batch(tmp_path):
    # Without the PSB predictors there is no Gumbel noise, so 2 micro-batches of 4 must give what
    # one batch of 8 gives, up to float32 summation order.
    model_cfg = dataclasses.replace(MODEL, use_psb=False)
    full, _, log_full = _run(tmp_path, "full", model_cfg, grad_accum_steps=1, adv_epochs=0)
    accum, _, log_accum = _run(tmp_path, "accum", model_cfg, grad_accum_steps=2, adv_epochs=0)
    steps_full = [v for _, v in log_full[("initialization", "loss_action")]]
    steps_accum = [v for _, v in log_accum[("initialization", "loss_action")]]
    assert steps_full == pytest.approx(steps_accum, rel=1e-5)
    for name, tensor in full.state_dict().items():
        torch.testing.assert_close(accum.state_dict()[name], tensor, rtol=1e-4, atol=1e-5)


def test_bf16_autocast_runs_the_model_in_bfloat16():
    cfg = _cfg(precision="bf16", init_epochs=1, log="none")
    torch.manual_seed(0)
    model = STPrivacy(MODEL)
    action_rec = make_recognizer(MODEL, cfg, 4, multilabel=False)
    dtypes = set()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    handles = [m.register_forward_hook(lambda module, args, out: dtypes.add(out.dtype)) for m in linears]
    history = train_initialization(model, action_rec, _data(cfg), cfg)
    for handle in handles:
        handle.remove()
    assert dtypes == {torch.bfloat16}
    assert all(torch.isfinite(torch.tensor(v)).all() for v in history.values())
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights stay fp32

    fp32 = train_initialization(STPrivacy(MODEL), make_recognizer(MODEL, cfg, 4, multilabel=False), _data(cfg),
                                dataclasses.replace(cfg, precision="fp32"))
    assert fp32["loss_action"] == pytest.approx(history["loss_action"], abs=0.05)


def test_gradient_clipping_bounds_the_global_norm():
    layer = nn.Linear(8, 8)
    (layer(torch.randn(4, 8)) * 1000).sum().backward()
    before = torch.cat([p.grad.flatten() for p in layer.parameters()]).norm()
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.0)
    clip_and_step(optimizer, _cfg(grad_clip=0.5))
    after = torch.cat([p.grad.flatten() for p in layer.parameters()]).norm()
    assert before > 10 and after == pytest.approx(0.5, rel=1e-4)
    (layer(torch.randn(4, 8)) * 1000).sum().backward()
    norm = torch.cat([p.grad.flatten() for p in layer.parameters()]).norm()
    clip_and_step(optimizer, _cfg(grad_clip=0.0))  # 0 = off
    assert torch.cat([p.grad.flatten() for p in layer.parameters()]).norm() == norm


def test_csv_log_every_and_tensorboard(tmp_path):
    _, _, log = _run(tmp_path, "csv", log_every=2, adv_epochs=0,  # 32 videos outside validation: 4 steps
                     dataset_kwargs={"train_videos": 40, "test_videos": 8})
    assert [s for s, _ in log[("initialization", "loss_spars")]] == [2, 4]
    _run(tmp_path, "tb", log="tensorboard", adv_epochs=0)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb" / "tensorboard")).Reload()
    assert {"initialization/loss_action", "initialization/keep"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("initialization/loss_action")] == [1, 2]


@pytest.mark.skipif(not os.environ.get("STPRIV_TEST_COMPILE"),
                    reason="torch.compile of the training step takes minutes on a CPU; STPRIV_TEST_COMPILE=1 runs it")
def test_compile_gives_the_eager_losses(tmp_path):
    _, eager, _ = _run(tmp_path, "eager", log="none", adv_epochs=0)
    _, compiled, _ = _run(tmp_path, "compiled", log="none", adv_epochs=0, compile=True)
    assert compiled["initialization"]["loss_action"] == pytest.approx(eager["initialization"]["loss_action"], rel=1e-4)


class _UnreadableVideos(Dataset):
    """The synthetic benchmark with some videos that fail to decode (None, as real datasets return)."""

    def __init__(self, base, unreadable: set[int]):
        self.base, self.unreadable = base, unreadable
        self.num_classes, self.num_attributes = base.num_classes, base.num_attributes
        self.collate_fn = collate_videos

    def __len__(self):
        return len(self.base)

    def __getitem__(self, index):
        return None if index in self.unreadable else self.base[index]


def test_a_batch_without_readable_videos_is_skipped_and_resume_stays_exact(tmp_path):
    cfg = _cfg(dataset_kwargs={"train_videos": 40, "test_videos": 8}, adv_epochs=0, checkpoint_every=1, log="none")
    base = _data(cfg)
    # The anonymizer trains on the 32 videos outside the validation split; batches hold positions in them.
    fit, _ = split_validation(len(base), cfg.validation_fraction, cfg.seed)
    order = [[fit[i] for i in batch]
             for batch in ResumableBatches(len(fit), cfg.batch_size, 1, seed=cfg.seed * 7919 + 1).epoch(0)]
    data = _UnreadableVideos(base, set(order[1]) | {order[2][0]})  # batch 2 empty, batch 3 one short
    sizes = {"num_classes": base.num_classes, "num_attributes": base.num_attributes}
    full, history = train_anonymizer(MODEL, cfg, data, out_dir=tmp_path / "full", **sizes)
    last = load_checkpoint(tmp_path / "full" / "initialization.pt")["progress"]
    assert last["step"] == 3 and last["epoch"] == 1  # 4 batches, 3 steps
    # last.prev.pt is the mid-epoch checkpoint after batch 3 (step 2): resume from it alone
    (tmp_path / "cut").mkdir()
    (tmp_path / "full" / "last.prev.pt").rename(tmp_path / "cut" / "last.pt")
    assert load_latest(tmp_path / "cut")["progress"]["batch"] == 3
    resumed, history_resumed = train_anonymizer(MODEL, cfg, data, out_dir=tmp_path / "cut", resume=True, **sizes)
    assert history_resumed["initialization"]["loss_action"] == history["initialization"]["loss_action"]
    for name, tensor in full.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name


# ---- the release's optimizer rules: predictor group, backbone cap and warm-up, layer decay ------

def _release_rules_config(**overrides):
    return TrainConfig(batch_size=512, base_lr=1e-3, **overrides)


def test_predictors_are_their_own_group_and_layers_decay():
    cfg = _release_rules_config(layer_decay=0.5)
    model = STPrivacy(STPrivacyConfig.small(embed_dim=24, num_heads=2, depth=1, num_psb=3, pab_depth=2))
    optimizer = make_optimizer([model], cfg)
    by_param = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    top = model.cfg.num_blocks + 1  # 5 blocks: the tokenizer is layer 0, the PAB's head layer 6
    assert by_param[id(named["embed.proj.weight"])]["lr_scale"] == 0.5 ** top
    assert by_param[id(named["psbs.1.blocks.0.attn.qkv.weight"])]["lr_scale"] == 0.5 ** (top - 2)
    assert by_param[id(named["pab.blocks.1.mlp.fc1.weight"])]["lr_scale"] == 0.5 ** (top - 5)
    assert by_param[id(named["pab.head.weight"])]["lr_scale"] == 1.0
    predictor = by_param[id(named["psbs.2.predictor.out_conv.0.weight"])]
    assert predictor["role"] == "predictor" and predictor["lr_scale"] == 0.5 ** (top - 3)
    assert by_param[id(named["pab.norm.bias"])]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(named)


def test_backbone_learning_rate_is_capped_and_warmed_up():
    cfg = _release_rules_config(backbone_lr_ratio=0.1, predictor_warmup_epochs=2)
    peak = cfg.peak_lr
    assert backbone_lr(peak, step=19, cfg=cfg, steps_per_epoch=10) == 0.0  # predictors alone
    assert backbone_lr(peak, step=20, cfg=cfg, steps_per_epoch=10) == pytest.approx(0.1 * peak)
    assert backbone_lr(0.01 * peak, step=50, cfg=cfg, steps_per_epoch=10) == pytest.approx(0.01 * peak)
    w = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([{"params": [w], "role": "backbone", "lr_scale": 0.5},
                                   {"params": [torch.nn.Parameter(torch.zeros(2))], "role": "predictor",
                                    "lr_scale": 1.0}])
    set_lr(optimizer, 1.0, backbone_lr=0.2)
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, 1.0]
    defaults = _release_rules_config()
    assert backbone_lr(0.3 * peak, 0, defaults, 10) == pytest.approx(0.3 * peak)  # one rate for all


@pytest.mark.parametrize("field,value", [("backbone_lr_ratio", 0.0), ("layer_decay", 1.5),
                                         ("predictor_warmup_epochs", -1)])
def test_release_rules_reject_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        _release_rules_config(**{field: value})


def test_privacy_steps_update_only_the_privacy_recognizer_again():
    """TrainConfig.privacy_steps: after one phase-2 batch, k steps leave the action recognizer and
    the anonymizer as one step does, and fit the privacy recognizer further on that batch."""
    from stprivacy.train.anonymizer import train_adversarial

    cfg = _cfg(dataset_kwargs={"train_videos": 8, "test_videos": 8}, adv_epochs=1, log="none")
    data = _data(cfg)
    video, action, privacy = collate_videos([data[i] for i in range(len(data))])

    def run(steps: int):
        torch.manual_seed(0)
        model = STPrivacy(MODEL)
        action_rec = make_recognizer(MODEL, cfg, data.num_classes, multilabel=False)
        privacy_rec = make_recognizer(MODEL, cfg, data.num_attributes, multilabel=True)
        before = {k: v.clone() for k, v in privacy_rec.state_dict().items()}
        train_adversarial(model, action_rec, privacy_rec, data, dataclasses.replace(cfg, privacy_steps=steps))
        with torch.no_grad():
            anonymized = model.eval()(video)
            loss = nn.functional.binary_cross_entropy_with_logits(privacy_rec.eval()(anonymized.video, anonymized.keep),
                                                                  privacy.float())
        return model, action_rec, privacy_rec, before, loss

    one = run(1)
    three = run(3)
    for a, b in ((one[0], three[0]), (one[1], three[1])):
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(x, y), name
    assert any(not torch.equal(x, y) for x, y in zip(one[2].state_dict().values(), three[2].state_dict().values()))
    assert three[4] < one[4]
    with pytest.raises(ValueError, match="privacy_steps"):
        _cfg(privacy_steps=0)


def test_filter_prior_closes_the_gates_the_losses_leave_alone():
    """TrainConfig.lambda_filter: with the action and privacy terms off, phase 2 moves the PAB's
    filter only through the prior, which opens every gate from 0 (the identity) towards 1."""
    from stprivacy.train.anonymizer import train_adversarial

    model_cfg = dataclasses.replace(MODEL, pab_residual=True, pab_filter=True)
    cfg = _cfg(dataset_kwargs={"train_videos": 8, "test_videos": 8}, adv_epochs=3, log="none",
               lambda_action=0.0, lambda_privacy=0.0, base_lr=1.0)
    data = _data(cfg)
    video = collate_videos([data[i] for i in range(len(data))])[0]

    def mean_gates(lambda_filter: float) -> torch.Tensor:
        torch.manual_seed(0)
        model = STPrivacy(model_cfg)
        recognizers = [make_recognizer(model_cfg, cfg, n, multilabel=m)
                       for n, m in ((data.num_classes, False), (data.num_attributes, True))]
        train_adversarial(model, *recognizers, data, dataclasses.replace(cfg, lambda_filter=lambda_filter))
        out = model.train()(video, generator=torch.Generator().manual_seed(0))
        assert out.filter_gates.shape == (*out.keep.shape, 2)
        return out.filter_gates.detach().mean(dim=(0, 1, 2))

    assert torch.equal(mean_gates(0.0), torch.zeros(2))  # nothing moves the identity
    assert (mean_gates(1.0) > 0.01).all()  # both gates open under the prior alone


def test_filter_prior_needs_a_filter(tmp_path):
    with pytest.raises(ValueError, match=r"lambda_filter=0\.1 .*pab_filter=True"):
        _run(tmp_path, "no_filter", lambda_filter=0.1)
    _run(tmp_path, "no_pab", dataclasses.replace(MODEL, use_pab=False), lambda_filter=0.1, init_epochs=0,
         adv_epochs=1)  # the "sparsification only" ablation: no block, nothing to reward
    with pytest.raises(ValueError, match="lambda_filter"):
        _cfg(lambda_filter=-1.0)
