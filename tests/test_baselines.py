"""Baseline transforms: shapes, what they keep, what they remove, and bad input."""
import pytest
import torch
import torch.nn.functional as F

from stprivacy.methods import baselines
from stprivacy.methods.baselines import BASELINE_NAMES, downsample, gaussian_blur, make_baseline


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
