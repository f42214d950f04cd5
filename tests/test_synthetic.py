"""The embedded benchmark: deterministic, action from motion only, privacy from single frames."""
import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from stprivacy.data import synthetic
from stprivacy.data.synthetic import (
    ACTOR_ATTRIBUTES,
    CELL_ACTOR,
    CELL_PRIVACY,
    DIRECTIONS,
    PRIVACY_ATTRIBUTES,
    SCENE_ATTRIBUTES,
    SyntheticVideos,
    render_actor,
)


def test_items_shapes_and_ranges():
    ds = SyntheticVideos("train", num_videos=6, seed=0, frames=6, size=40, cell=8, num_classes=8)
    video, action, privacy = ds[5]
    assert video.shape == (3, 6, 40, 40) and video.dtype == torch.float32
    assert 0.0 <= video.min() and video.max() <= 1.0
    assert isinstance(action, int) and 0 <= action < 8
    assert privacy.shape == (5,) and set(privacy.tolist()) <= {0.0, 1.0}
    assert ds.attributes == PRIVACY_ATTRIBUTES and len(ds) == 6


def test_deterministic_by_seed_split_and_index():
    a = SyntheticVideos("train", num_videos=4, seed=3)
    b = SyntheticVideos("train", num_videos=4, seed=3)
    for i in range(4):
        torch.testing.assert_close(a[i][0], b[i][0], rtol=0, atol=0)
    assert not torch.equal(a[0][0], SyntheticVideos("train", num_videos=4, seed=4)[0][0])
    assert not torch.equal(a[0][0], SyntheticVideos("test", num_videos=4, seed=3)[0][0])
    assert torch.equal(a[-1][0], a[3][0])
    data = synthetic.materialize(a)
    torch.testing.assert_close(data.tensors[0][2], a[2][0], rtol=0, atol=0)


@pytest.mark.parametrize("speed", [1, 3])
def test_every_single_frame_has_the_same_distribution_for_every_class(speed):
    # The phase is uniform on the torus, so the set of possible frames at time t (over all
    # phases) is the same for every direction: a single frame carries no information on the class.
    side, frames = 8, 4
    for t in range(frames):
        frame_sets = []
        for dy, dx in DIRECTIONS:
            clips = [
                render_actor(side, frames, (dy * speed, dx * speed), y0, x0, 8, 0.3, 0.5)[:, t].flatten()
                for y0 in range(side)
                for x0 in range(side)
            ]
            frame_sets.append(torch.stack(clips))
        for frames_of_class in frame_sets[1:]:
            # Same set up to float rounding: every frame has an equal partner, one to one.
            distance = torch.cdist(frames_of_class, frame_sets[0], p=float("inf"))
            match = distance < 1e-4
            assert match.any(1).all() and match.any(0).all()
            assert (match.sum(1) == match.sum(0)).all()


def test_two_frames_determine_the_class():
    # Frame t+1 is frame t rolled by the class's velocity: two frames determine the direction.
    ds = SyntheticVideos("train", num_videos=40, seed=1, num_classes=8)
    speed = ds.spec.speed
    for i in range(len(ds)):
        video, action, _, layout = synthetic.make_video(ds.spec, ds.video_seed(i), return_layout=True)
        ay, ax = [int(v) for v in (layout == CELL_ACTOR).nonzero()[0]]
        region = video[0, :, ay * 8 : ay * 8 + 16, ax * 8 : ax * 8 + 16]
        scores = [
            -(torch.roll(region[0], (dy * speed, dx * speed), dims=(0, 1)) - region[1]).abs().sum().item()
            for dy, dx in DIRECTIONS
        ]
        assert int(np.argmax(scores)) == action


def _cells(ds, code):
    """(frame-0 pixels of the cell holding `code`, labels) over the dataset."""
    xs, actions, privacy = [], [], []
    for i in range(len(ds)):
        video, action, priv, layout = synthetic.make_video(ds.spec, ds.video_seed(i), return_layout=True)
        cy, cx = [int(v) for v in (layout == code).nonzero()[0]]
        size = 16 if code == CELL_ACTOR else 8
        xs.append(video[:, 0, cy * 8 : cy * 8 + size, cx * 8 : cx * 8 + size].flatten().numpy())
        actions.append(action)
        privacy.append(priv.numpy())
    return np.stack(xs), np.array(actions), np.stack(privacy)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # nothing to converge to
def test_a_frame_level_classifier_cannot_beat_chance_on_action():
    train = SyntheticVideos("train", num_videos=300, seed=0, num_classes=4)
    test = SyntheticVideos("test", num_videos=300, seed=0, num_classes=4)
    x_train, y_train, _ = _cells(train, CELL_ACTOR)
    x_test, y_test, _ = _cells(test, CELL_ACTOR)
    clf = LogisticRegression(max_iter=300).fit(x_train, y_train)
    assert clf.score(x_test, y_test) < 0.25 + 0.08  # chance is 1/4; 0.08 is ~3 standard errors


@pytest.mark.parametrize("k", range(len(SCENE_ATTRIBUTES)))
def test_each_scene_attribute_is_visible_in_a_single_frame_of_its_cell(k):
    column = PRIVACY_ATTRIBUTES.index(SCENE_ATTRIBUTES[k])
    train = SyntheticVideos("train", num_videos=200, seed=0)
    test = SyntheticVideos("test", num_videos=100, seed=0)
    x_train, _, p_train = _cells(train, CELL_PRIVACY + k)
    x_test, _, p_test = _cells(test, CELL_PRIVACY + k)
    clf = LogisticRegression(max_iter=500).fit(x_train, p_train[:, column])
    assert clf.score(x_test, p_test[:, column]) > 0.9


@pytest.mark.parametrize("name", ACTOR_ATTRIBUTES)
def test_the_actor_carries_its_attributes_in_every_single_frame(name):
    """The tint is a linear function of the actor's pixels; the face marking sits at any phase,
    so its orientation shows in the magnitude of the region's Fourier transform (shift-invariant)."""
    column = PRIVACY_ATTRIBUTES.index(name)
    train = SyntheticVideos("train", num_videos=300, seed=0)
    test = SyntheticVideos("test", num_videos=150, seed=0)
    x_train, _, p_train = _cells(train, CELL_ACTOR)
    x_test, _, p_test = _cells(test, CELL_ACTOR)
    if name == "face":
        x_train, x_test = (np.abs(np.fft.fft2(x.reshape(-1, 3, 16, 16))).reshape(len(x), -1) for x in (x_train, x_test))
    clf = LogisticRegression(max_iter=2000).fit(x_train, p_train[:, column])
    assert clf.score(x_test, p_test[:, column]) > 0.9


@pytest.mark.parametrize("across", [True, False])
def test_the_face_marking_moves_with_the_actor(across):
    side, velocity = 16, (4, -4)
    marking = synthetic.render_marking(side, 3, velocity, 5, across, 4, 0.3)
    assert marking.abs().max() > 0.1
    for t in range(2):
        assert torch.allclose(torch.roll(marking[t], velocity, dims=(0, 1)), marking[t + 1], atol=1e-5)
    # Stripes across the actor vary along y only; along it, along x only.
    assert torch.allclose(marking[0], marking[0][:, :1].expand(-1, side) if across else marking[0][:1].expand(side, -1))


def test_privacy_and_actor_cells_never_overlap():
    ds = SyntheticVideos("train", num_videos=20, seed=2)
    for i in range(len(ds)):
        layout = ds.layout(i)
        assert (layout == CELL_ACTOR).sum() == 4
        for k in range(len(SCENE_ATTRIBUTES)):
            assert (layout == CELL_PRIVACY + k).sum() == 1


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="split"):
        SyntheticVideos("dev")
    with pytest.raises(ValueError, match="num_videos"):
        SyntheticVideos("train", num_videos=0)
    with pytest.raises(ValueError, match="multiple of cell"):
        SyntheticVideos("train", size=30, cell=8)
    with pytest.raises(ValueError, match="frames"):
        SyntheticVideos("train", frames=1)
    with pytest.raises(ValueError, match="wavelength"):
        SyntheticVideos("train", wavelength=12)
    with pytest.raises(ValueError, match="speed"):
        SyntheticVideos("train", speed=8)
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticVideos("train", num_classes=9)
    with pytest.raises(ValueError, match="cannot hold"):
        SyntheticVideos("train", size=16, cell=8)
    with pytest.raises(TypeError):
        SyntheticVideos("train", colour=3)
    with pytest.raises(IndexError):
        SyntheticVideos("train", num_videos=2)[2]


def test_oracle_masks_keep_exactly_the_actor_cells():
    ds = SyntheticVideos("train", num_videos=5, seed=3)
    masks = synthetic.actor_keep_masks(ds, time_steps=4)
    assert masks.shape == (5, 4, 16)
    for i in range(5):
        assert torch.equal(masks[i, 2], (ds.layout(i) == CELL_ACTOR).flatten().float())
        assert torch.equal(masks[i, 0], masks[i, 3]) and masks[i, 0].sum() == 4


def test_materialized_copy_keeps_what_the_dataset_declares():
    from stprivacy.data.synthetic import materialize

    data = SyntheticVideos("train", num_videos=8, seed=3)
    copy = materialize(data)
    assert (copy.num_classes, copy.num_attributes) == (data.num_classes, data.num_attributes)
    assert getattr(copy, "attributes", None) == getattr(data, "attributes", None)
    video, action, privacy = copy[5]
    ref = data[5]
    assert torch.equal(video, ref[0]) and int(action) == ref[1] and torch.equal(privacy, ref[2])


# --- Readability by the protocol's small attackers: closed-form single-frame statistics ------------
# The attackers are one-block ViTs on 8 x 8 patches, trained for a few hundred steps; they read an
# attribute when it is a fixed pixel pattern in its patch (benchmarks/attribute_readability.py
# measures them). These tests pin the rendering properties that make it so, at a fraction of the cost.


def _frames_of(code, num_videos=120, seed=5, **spec):
    """(one random frame's grey pixels of the region holding `code` [N, h, w], actions, privacy)."""
    ds = SyntheticVideos("train", num_videos=num_videos, seed=seed, **spec)
    rng = np.random.default_rng(seed)
    crops, actions, privacy = [], [], []
    for i in range(len(ds)):
        video, action, priv, layout = synthetic.make_video(ds.spec, ds.video_seed(i), return_layout=True)
        cy, cx = [int(v) for v in (layout == code).nonzero()[0]]
        size = 2 * ds.spec.cell if code == CELL_ACTOR else ds.spec.cell
        t = int(rng.integers(ds.spec.frames))
        crops.append(video[:, t, cy * ds.spec.cell : cy * ds.spec.cell + size,
                           cx * ds.spec.cell : cx * ds.spec.cell + size].mean(0).numpy())
        actions.append(action)
        privacy.append(priv.numpy())
    return np.stack(crops), np.array(actions), np.stack(privacy)


def _stripes(side, period, shift, across):
    """+-1 square-wave stripes of `period` pixels shifted by `shift`, varying along y if `across`."""
    profile = np.where(np.mod(np.arange(side) - shift, period) < period / 2, 1.0, -1.0)
    return np.tile(profile[:, None], (1, side)) if across else np.tile(profile[None, :], (side, 1))


def test_face_orientation_shows_in_the_oriented_energy_of_a_single_frame():
    # A lag-2 second difference answers to the 4-pixel stripes (4 x their amplitude) and hardly to
    # the 16-pixel plaid: whichever axis has more of that energy is the stripes' orientation.
    frames, _, privacy = _frames_of(CELL_ACTOR)
    across = privacy[:, PRIVACY_ATTRIBUTES.index("face")] == 1
    energy_y = np.abs(frames[:, :-4] - 2 * frames[:, 2:-2] + frames[:, 4:]).mean((1, 2))
    energy_x = np.abs(frames[:, :, :-4] - 2 * frames[:, :, 2:-2] + frames[:, :, 4:]).mean((1, 2))
    assert ((energy_y > energy_x) == across).mean() == 1.0
    assert np.minimum(energy_y, energy_x).mean() < 0.5 * np.maximum(energy_y, energy_x).mean()


def test_face_stripes_lie_on_the_same_pixels_in_every_frame_and_video():
    # What lets a patch-linear attacker read the face: one fixed template per orientation, so a
    # linear statistic (the correlation with each orientation's stripes at phase 0) decides.
    frames, _, privacy = _frames_of(CELL_ACTOR)
    across = privacy[:, PRIVACY_ATTRIBUTES.index("face")] == 1
    side = frames.shape[-1]
    score = (frames * (_stripes(side, 4, 0, True) - _stripes(side, 4, 0, False))).sum((1, 2))
    assert ((score > 0) == across).mean() == 1.0


@pytest.mark.parametrize("speed", [3, 4])
def test_face_stripes_phase_in_any_frame_is_independent_of_the_class(speed):
    # The stripes move with the actor; their phase is drawn among the phases the motion reaches
    # (multiples of gcd(speed, 4)), so in every frame its distribution is the same for each class:
    # a single phase at speed 4, all four at speed 3 (locking it there would leak the direction).
    ds = SyntheticVideos("train", num_videos=160, seed=7, num_classes=4, speed=speed, frames=6)
    phases = {c: [] for c in range(4)}
    for i in range(len(ds)):
        video, action, priv, layout = synthetic.make_video(ds.spec, ds.video_seed(i), return_layout=True)
        cy, cx = [int(v) for v in (layout == CELL_ACTOR).nonzero()[0]]
        across = bool(priv[PRIVACY_ATTRIBUTES.index("face")])
        frame = video[:, -1, cy * 8 : cy * 8 + 16, cx * 8 : cx * 8 + 16].mean(0).numpy()
        phases[action].append(int(np.argmax([(frame * _stripes(16, 4, s, across)).sum() for s in range(4)])))
    expected = {0} if speed == 4 else {0, 1, 2, 3}
    for action, seen in phases.items():
        assert set(seen) == expected, (action, sorted(set(seen)))
        if speed == 3:
            assert max(np.bincount(seen, minlength=4)) / len(seen) < 0.5  # near uniform, not one phase


# A linear statistic of one frame of a glyph's cell (grey levels, 8 x 8) per attribute, positive for
# value 1: the value is in the shape (both shapes cover about the same area), so each compares two
# parts of the cell, and the background, the noise and the glyph's brightness cancel out.
_GLYPH_STATISTICS = {
    "gender": lambda c: c[:, 4:, :].sum((1, 2)) - c[:, :4, :].sum((1, 2)),  # a dress: mass at the bottom
    "nudity": lambda c: c[:, 2:6, 2:6].mean((1, 2)) - c[:, 1:7, [1, 6]].mean((1, 2)),  # solid vs rim
    "relationship": lambda c: c[:, 1:7, [1, 6]].sum((1, 2)) - c[:, 1:7, 3:5].sum((1, 2)),  # two vs one
}


@pytest.mark.parametrize("k", range(len(SCENE_ATTRIBUTES)))
def test_each_glyph_value_is_decided_by_a_fixed_linear_statistic_of_one_frame(k):
    name = SCENE_ATTRIBUTES[k]
    cells, _, privacy = _frames_of(CELL_PRIVACY + k)
    value = privacy[:, PRIVACY_ATTRIBUTES.index(name)] == 1
    score = _GLYPH_STATISTICS[name](cells)
    assert ((score > 0) == value).mean() == 1.0
    # With a margin: the weaker value's scores stay clear of zero, not just on the right side.
    assert min(score[value].min(), -score[~value].max()) > 0.1 * np.abs(score).mean()


@pytest.mark.parametrize("name", SCENE_ATTRIBUTES)
def test_each_glyph_value_is_one_pixel_pattern(name):
    # Centered in its cell: every draw of a value is the same shape (only the brightness varies),
    # the two values' shapes differ, and their areas are within a fifth of each other.
    shapes = {}
    for value in (0, 1):
        masks = {tuple(synthetic._glyph(name, value, 8, torch.Generator().manual_seed(s))[0].gt(0).flatten().tolist())
                 for s in range(20)}
        assert len(masks) == 1
        shapes[value] = np.array(masks.pop())
    assert (shapes[0] != shapes[1]).sum() >= 8
    areas = sorted(int(shapes[v].sum()) for v in (0, 1))
    assert areas[0] >= 0.8 * areas[1]


def test_marking_period_must_be_even():
    with pytest.raises(ValueError, match="marking_period"):
        SyntheticVideos("train", size=40, cell=5, wavelength=10, marking_period=5)
