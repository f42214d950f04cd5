"""Baseline transforms: shapes, what they keep, what they remove, and bad input."""
import pytest
import torch
import torch.nn.functional as F

from stprivacy.methods import baselines
from stprivacy.methods.baselines import BASELINE_NAMES, downsample, gaussian_blur, make_baseline
from train_fixtures import one_thread

_one_thread = pytest.fixture(autouse=True)(one_thread)  # the tiny recognizers below run fastest on one


def _video(seed=0, shape=(2, 3, 4, 32, 32)):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def _high_frequency_energy(video):
    return (video[..., 1:, :] - video[..., :-1, :]).pow(2).mean() + (video[..., 1:] - video[..., :-1]).pow(2).mean()


@pytest.mark.parametrize("name", BASELINE_NAMES)
def test_shape_dtype_and_constant_videos(name):
    video = _video()
    out = make_baseline(name, 32)(video)
    assert out.shape == video.shape and out.dtype == video.dtype
    constant = torch.full((1, 3, 2, 32, 32), 0.3)
    torch.testing.assert_close(make_baseline(name, 32)(constant), constant)


def test_stronger_baselines_remove_more_detail():
    video = _video(1)
    energy = {name: _high_frequency_energy(make_baseline(name, 32)(video)).item() for name in BASELINE_NAMES}
    assert energy["downsample_4x"] < energy["downsample_2x"] < energy["raw"]
    assert energy["blur_strong"] < energy["blur_weak"] < energy["raw"]


def test_blur_matches_a_direct_2d_gaussian_in_float64():
    video = _video(2).double()
    sigma = 1.5
    taps = baselines.gaussian_kernel1d(sigma, torch.float64)
    r = taps.numel() // 2
    kernel2d = torch.outer(taps, taps).expand(3, 1, -1, -1)
    frames = video.transpose(1, 2).reshape(-1, 3, 32, 32)
    want = F.conv2d(F.pad(frames, (r, r, r, r), mode="reflect"), kernel2d, groups=3)
    want = want.reshape(2, 4, 3, 32, 32).transpose(1, 2)
    torch.testing.assert_close(gaussian_blur(video, sigma), want)
    assert taps.sum().item() == pytest.approx(1.0)


def test_downsample_is_frame_wise_and_identity_at_factor_1():
    video = _video(3)
    torch.testing.assert_close(downsample(video, 1), video)
    out = downsample(video, 4)
    # Each frame depends on that frame only.
    single = downsample(video[:, :, 2:3], 4)
    torch.testing.assert_close(out[:, :, 2:3], single)
    # The 8x8 area means survive: bilinear upsampling from 8x8 keeps the block averages close.
    torch.testing.assert_close(F.avg_pool2d(out[0, :, 0], 4), F.avg_pool2d(video[0, :, 0], 4), atol=0.1, rtol=0)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="unknown baseline"):
        make_baseline("pixelate", 32)
    with pytest.raises(ValueError, match="divisible"):
        downsample(_video(shape=(1, 3, 2, 30, 30)), 4)
    with pytest.raises(ValueError, match="factor"):
        downsample(_video(), 0)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_blur(_video(), -1.0)
    with pytest.raises(ValueError, match="too wide"):
        gaussian_blur(_video(shape=(1, 3, 2, 8, 8)), 4.0)
    with pytest.raises(ValueError, match="video must be"):
        gaussian_blur(torch.zeros(3, 32, 32), 1.0)


# ---- person-region baselines and controls -------------------------------------------------------------

REGION_BASELINES = ("person_blacken", "person_blur_strong", "person_blur_weak", "oracle_grey_blur")


def _regions(seed=0, shape=(2, 4, 32, 32)):
    """Tensor[B, T, H, W] bool: a random rectangle per video and frame."""
    g = torch.Generator().manual_seed(seed)
    region = torch.zeros(shape, dtype=torch.bool)
    for b in range(shape[0]):
        for t in range(shape[1]):
            y0, x0 = torch.randint(0, 16, (2,), generator=g).tolist()
            h, w = torch.randint(6, 16, (2,), generator=g).tolist()
            region[b, t, y0 : y0 + h, x0 : x0 + w] = True
    return region


def _hand_grey(video):
    r, g, b = video.unbind(1)
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(1).expand_as(video)


def _reflect(i, n):
    """The index numpy's and torch's "reflect" padding reads for position i of a length-n axis."""
    return -i if i < 0 else (2 * (n - 1) - i if i >= n else i)


def _hand_region_blur(frame, mask, sigma):
    """Normalized Gaussian blur of one Tensor[H, W] float64 frame inside bool mask[H, W], by loops."""
    taps = baselines.gaussian_kernel1d(sigma, torch.float64)
    r = taps.numel() // 2
    H, W = frame.shape
    out = frame.clone()
    for y in range(H):
        for x in range(W):
            if not mask[y, x]:
                continue
            num = den = 0.0
            for dy in range(-r, r + 1):
                for dx in range(-r, r + 1):
                    yy, xx = _reflect(y + dy, H), _reflect(x + dx, W)
                    weight = taps[dy + r] * taps[dx + r] * float(mask[yy, xx])
                    num, den = num + weight * frame[yy, xx], den + weight
            out[y, x] = num / den
    return out


@pytest.mark.parametrize("name", ["grey", "grey_blur", *REGION_BASELINES])
def test_new_baselines_shape_and_range(name):
    video, region = _video(4), _regions(4)
    fn = make_baseline(name, 32)
    out = fn(video, region) if name in REGION_BASELINES else fn(video)
    assert out.shape == video.shape and out.dtype == video.dtype
    assert out.min() >= 0 and out.max() <= 1 + 1e-6
    assert not torch.equal(out, video)


@pytest.mark.parametrize("name", ["person_blacken", "person_blur_strong", "person_blur_weak"])
def test_person_baselines_change_only_the_region(name):
    video, region = _video(5), _regions(5)
    out = make_baseline(name, 32)(video, region)
    outside = ~region.unsqueeze(1).expand_as(video)
    torch.testing.assert_close(out[outside], video[outside], rtol=0, atol=0)
    if name == "person_blacken":
        assert (out[~outside] == 0).all()
    else:
        assert torch.isfinite(out).all()  # no 0 / 0 in the normalized blur
        assert (out[~outside] - video[~outside]).abs().mean() > 0.05


def test_region_blur_matches_a_hand_computation_and_nothing_leaks_in():
    video = _video(6, shape=(1, 3, 1, 12, 12)).double()
    region = torch.zeros(1, 1, 12, 12, dtype=torch.bool)
    region[0, 0, 2:7, 5:11] = True
    region[0, 0, 11, 0] = True  # a lone pixel, 5 rows from the rest: more than the 3-sigma radius
    sigma = 1.0
    out = baselines.blur_region(video, region, sigma)
    for c in range(3):
        torch.testing.assert_close(out[0, c, 0], _hand_region_blur(video[0, c, 0], region[0, 0], sigma))
    torch.testing.assert_close(out[0, :, 0, 11, 0], video[0, :, 0, 11, 0])  # its own mean: itself
    # A constant region in a different surround stays that constant: no outside pixel leaks in.
    framed = torch.where(region.unsqueeze(1), torch.tensor(0.25, dtype=torch.float64), torch.tensor(1.0,
                                                                                                     dtype=torch.float64))
    torch.testing.assert_close(baselines.blur_region(framed, region, 2.0), framed)


def test_blur_constants_are_the_demo_rows_sigmas():
    assert baselines.blur_sigma("weak", 112) == 3.5 and baselines.blur_sigma("strong", 112) == 7.0
    assert baselines.blur_sigma("weak", 32) == 1.0 and baselines.blur_sigma("strong", 32) == 2.0
    video, region = _video(7), torch.ones(2, 4, 32, 32, dtype=torch.bool)
    for strength, sigma in (("weak", 1.0), ("strong", 2.0)):
        torch.testing.assert_close(make_baseline(f"blur_{strength}", 32)(video), gaussian_blur(video, sigma),
                                   rtol=0, atol=0)
        # The person blur over the whole frame is the whole-frame blur (same sigma, same padding).
        torch.testing.assert_close(make_baseline(f"person_blur_{strength}", 32)(video, region),
                                   gaussian_blur(video, sigma), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="strength"):
        baselines.blur_sigma("medium", 32)


def test_grey_and_grey_blur_match_hand_computations():
    video = _video(8).double()
    grey = make_baseline("grey", 32)(video)
    torch.testing.assert_close(grey, _hand_grey(video))
    assert torch.equal(grey[:, 0], grey[:, 1]) and torch.equal(grey[:, 1], grey[:, 2])
    # Strong blur of the grey frame: a direct 2-D Gaussian of sigma 32 / 16 = 2 px, reflect padding.
    taps = baselines.gaussian_kernel1d(2.0, torch.float64)
    r = taps.numel() // 2
    frames = _hand_grey(video)[:, :1].transpose(1, 2).reshape(-1, 1, 32, 32)
    want = F.conv2d(F.pad(frames, (r, r, r, r), mode="reflect"), torch.outer(taps, taps)[None, None])
    want = want.reshape(2, 4, 1, 32, 32).transpose(1, 2).expand_as(video)
    torch.testing.assert_close(make_baseline("grey_blur", 32)(video), want)


def test_oracle_grey_blur_matches_a_hand_computation():
    video = _video(9, shape=(1, 3, 2, 12, 12)).double()
    region = torch.zeros(1, 2, 12, 12, dtype=torch.bool)
    region[0, :, 4:12, 0:8] = True  # the actor's 2 x 2 cells of 4 px, in both frames
    out = baselines.OracleGreyBlur(sigma=1.5)(video, region)
    grey = _hand_grey(video)[0, 0]
    for t in range(2):
        want = torch.where(region[0, t], _hand_region_blur(grey[t], region[0, t], 1.5), torch.zeros(()).double())
        for c in range(3):
            torch.testing.assert_close(out[0, c, t], want)
    with pytest.raises(ValueError, match="actor region"):
        make_baseline("oracle_grey_blur", 32)(_video())


def test_region_errors():
    with pytest.raises(ValueError, match="region must be a bool"):
        make_baseline("person_blacken", 32)(_video(), _regions().float())
    with pytest.raises(ValueError, match="region must be a bool"):
        make_baseline("person_blacken", 32)(_video(), _regions()[:, :2])
    with pytest.raises(ValueError, match="greyscale needs RGB"):
        baselines.greyscale(_video(shape=(1, 1, 2, 8, 8)))
    with pytest.raises(ValueError, match="effect"):
        baselines.PersonBaseline("pixelate")
    with pytest.raises(ValueError, match="sigma"):
        baselines.PersonBaseline("blur")


def test_name_lists():
    # The demo's rows are these, in this order; every other baseline is offered by the command line.
    assert BASELINE_NAMES == ("raw", "downsample_2x", "downsample_4x", "blur_weak", "blur_strong")
    assert set(baselines.ALL_BASELINES) == set(baselines.BASELINE_REGIONS)
    assert all(baselines.BASELINE_REGIONS[n] == "whole frame" for n in BASELINE_NAMES + ("grey", "grey_blur"))
    for name in baselines.ALL_BASELINES:
        assert getattr(make_baseline(name, 32), "takes_region", False) == (name in REGION_BASELINES)
    from stprivacy.cli import build_parser

    args = build_parser().parse_args(["evaluate", "--config", "run.json", "--baselines", *baselines.ALL_BASELINES])
    assert tuple(args.baselines) == baselines.ALL_BASELINES


# ---- where the synthetic benchmark's person is, and how it reaches a baseline ---------------------------

def _synthetic(num_videos=7):
    from stprivacy.data.synthetic import SyntheticVideos

    return SyntheticVideos("test", num_videos=num_videos, seed=3)


def test_synthetic_person_region_is_the_actor():
    from stprivacy.data.synthetic import actor_keep_masks

    data = _synthetic()
    keep = actor_keep_masks(data, time_steps=1)  # [M, 1, grid * grid]: the oracle row's actor cells
    for i in range(len(data)):
        region = data.person_region(i)
        assert region.shape == (8, 32, 32) and region.dtype == torch.bool
        assert all(torch.equal(region[t], region[0]) for t in range(8))
        cells = region[0].reshape(4, 8, 4, 8).permute(0, 2, 1, 3).reshape(16, 64)
        assert torch.equal(cells.all(1).float(), keep[i, 0]) and torch.equal(cells.any(1), cells.all(1))
        assert int(region[0].sum()) == 4 * 8 * 8  # 2 x 2 cells of 8 px
        # The actor's texture moves; the region holds the frame-to-frame change of the video.
        video = data[i][0]
        change = (video[:, 1:] - video[:, :-1]).abs().mean(dim=(0, 1))
        assert change[region[0]].mean() > 1.5 * change[~region[0]].mean()


def test_transform_dataset_hands_each_video_its_region():
    from stprivacy.train.config import TrainConfig
    from stprivacy.train.evaluation import baseline_transform, transform_dataset

    data = _synthetic()
    cfg = TrainConfig(dataset="synthetic", batch_size=3, progress=False)  # 7 videos: batches of 3, 3, 1
    videos = torch.stack([data[i][0] for i in range(len(data))])
    regions = torch.stack([data.person_region(i) for i in range(len(data))])
    for name in ("person_blacken", "oracle_grey_blur"):
        out = transform_dataset(baseline_transform(make_baseline(name, 32)), data, cfg).tensors[0]
        torch.testing.assert_close(out, make_baseline(name, 32)(videos, regions), rtol=0, atol=0)
    out = transform_dataset(baseline_transform(make_baseline("person_blacken", 32)), data, cfg).tensors[0]
    channels_last = out.permute(0, 2, 3, 4, 1)  # [M, T, H, W, 3], indexed by the regions [M, T, H, W]
    assert (channels_last[regions] == 0).all()
    assert torch.equal(channels_last[~regions], videos.permute(0, 2, 3, 4, 1)[~regions])
    # A baseline without a region is called as before.
    raw = transform_dataset(baseline_transform(make_baseline("raw", 32)), data, cfg).tensors[0]
    assert torch.equal(raw, videos)


def test_frame_attackers_refuse_a_region_baseline_on_a_dataset_with_regions():
    from stprivacy.attack.evaluate import baseline_method, evaluate_methods
    from stprivacy.errors import UsageError
    from stprivacy.model import STPrivacyConfig
    from stprivacy.train.config import TrainConfig

    data, model_cfg = _synthetic(), STPrivacyConfig.small()
    cfg = TrainConfig(dataset="synthetic", batch_size=4, eval_epochs=1, progress=False)
    method = baseline_method("person_blur_strong", model_cfg, data, data)
    assert method.info == {"region": "person region"}
    with pytest.raises(UsageError, match="does not pass the dataset's person regions"):
        evaluate_methods([method], model_cfg, cfg, attackers=("frame",))


def test_region_baselines_through_the_public_evaluation(tmp_path):
    """``evaluate_transform(..., baselines=[...])`` on the synthetic benchmark: the region reaches
    the baselines (without it, the 32-pixel frames would make the person detector refuse)."""
    from stprivacy.attack.evaluate import evaluate_transform
    from stprivacy.model import STPrivacyConfig
    from stprivacy.train.config import TrainConfig

    cfg = TrainConfig(dataset="synthetic", dataset_kwargs={"train_videos": 8, "test_videos": 8}, batch_size=8,
                      eval_epochs=1, progress=False, recognizer={"embed_dim": 24, "num_heads": 2, "depth": 1})
    torch.manual_seed(0)
    evaluation = evaluate_transform(torch.nn.Identity(), "synthetic", model_cfg=STPrivacyConfig.small(), cfg=cfg,
                                    baselines=["blur_strong", "person_blacken", "oracle_grey_blur"], out=tmp_path)
    rows = evaluation["rows"]
    assert [rows[n]["region"] for n in ("blur_strong", "person_blacken", "oracle_grey_blur")] == [
        "whole frame", "person region", "actor tubelets (others black)"]
    assert "| oracle_grey_blur |" in (tmp_path / "evaluation.md").read_text()
