"""An embedded synthetic benchmark that asks the paper's question without any download.

Every video is a grid of ``cell x cell`` squares (``cell`` = the tubelet's spatial size, so a
tubelet never straddles two kinds of content):

* **Action = motion only.** A textured "actor" (a plaid: two crossed sinusoidal gratings) fills
  a 2x2-cell region and drifts with a constant velocity, wrapping around the region's borders
  (a torus). The class is the direction of motion. The phase is uniform over the torus, so in
  *every* frame the texture's position is uniform and independent of the class: no single frame
  says anything about the action; two frames do (consecutive frames are a quarter period apart).
  Note what this implies: any linear function of the pixels has the same mean for every class,
  so a recognizer must combine frames nonlinearly (as real motion recognition does).
* **Privacy = appearance**, five attributes named like VP-HMDB51's, each an independent fair coin,
  each visible in any single frame, in two kinds of place:

  - *Carried by the actor* (``ACTOR_ATTRIBUTES``): ``skin_color`` is the actor's tint (warm or
    cool, of equal brightness), ``face`` a fine marking that moves with the actor's texture:
    square-wave stripes of ``marking_period`` (4) pixels, across the actor (1) or along it (0), an
    identity-like detail that rides on the moving person. Dropping these tubelets drops the
    action with them: only rewriting them (the anonymization block) can hide these attributes.
  - *In cells of their own* (``SCENE_ATTRIBUTES``: gender, nudity, relationship), a glyph each,
    centered in a cell placed at random outside the actor region: its color says which attribute
    it is, its shape the value. Each attribute's two shapes cover (nearly) the same area, so the
    value is in the arrangement, not in the amount of color: ``gender`` a restroom-sign figure,
    a dress wide at the bottom (1) or shoulders wide at the top (0); ``nudity`` a solid patch of
    bare skin (1) or a dark garment with a rim of skin around it (0); ``relationship`` two narrow
    upright figures side by side (1) or one wide one (0). Dropping these tubelets (the
    sparsification) removes them.
* **Distractors.** Static clutter cells (near-grey rectangles or grey noise), cells that flicker at
  random (motion energy that is not the action), per-pixel noise, random brightness and contrast
  of the actor and the glyphs, and a random layout per video, so that a model must look at
  content, not at fixed positions.

**Every attribute is readable on raw video by the protocol's small attackers** (a one-block ViT
with 8 x 8 patches trained for a few hundred steps): ``benchmarks/attribute_readability.py``
checks test AP >= 90 for each attribute on every seed (docs/demo_results.md). Three choices make
this so, each measured: (1) the face stripes sit at a phase of the pixel grid that the motion
keeps (uniform over the multiples of gcd(speed, marking_period), a single phase at the default
speed = period = 4), so a patch sees the same stripe pattern in every frame and video; at a
uniform phase the attackers had to learn a phase-invariant energy and stayed at chance. (2) The
glyphs are centered in their cell, so each value is one fixed pixel pattern per patch; with a
sub-pixel jitter the shapes aliased into many patterns (seed 0: nudity AP 75, relationship 63).
(3) Each value is a shape of equal area, not an amount of color: a garment hiding most of the
body, an amount cue that the glyph's random brightness confounds, was still read at AP 82-90 on
some seeds, the equal-area shapes at 100. The clutter is near-grey, so the glyphs' colors
identify them. None of this makes an attribute depend on the action or the
layout: the properties below hold as before.

So the benchmark needs both mechanisms of the paper: keeping exactly the actor's tubelets keeps
the action and removes the scene attributes but leaks the actor's; rewriting everything without
dropping must hide the scene glyphs' every detail. Blurring or downsampling the whole frame
degrades the action's texture and the fine details (the face stripes, a 4-pixel period that a
4x box filter averages to zero, and the glyphs' shapes) together, but not the actor's tint,
which is the trade-off the paper measures. Everything is generated from ``(seed, split,
index)``, so two datasets built with the same arguments are identical, on any machine, in any
worker.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import ConfigError

PRIVACY_ATTRIBUTES = ("face", "skin_color", "gender", "nudity", "relationship")
ACTOR_ATTRIBUTES = ("face", "skin_color")  # carried by the moving actor
SCENE_ATTRIBUTES = ("gender", "nudity", "relationship")  # a glyph cell each

# Unit velocities of the action classes, (dy, dx): 4 axis directions, then the 4 diagonals.
DIRECTIONS = ((0, 1), (0, -1), (1, 0), (-1, 0), (1, 1), (-1, -1), (1, -1), (-1, 1))

# Base color of each attribute's glyph (identifies the attribute); the label changes a property.
_GLYPH_COLORS = {
    "gender": (0.35, 0.55, 0.95),
    "nudity": (0.95, 0.45, 0.70),
    "relationship": (0.40, 0.85, 0.45),
}
_SPLIT_OFFSET = {"train": 0, "test": 1, "val": 2}


@dataclass(frozen=True)
class SyntheticSpec:
    """Sizes of the synthetic benchmark.

    Attributes:
        frames: T, number of frames (>= 2; the action needs two).
        size: H = W in pixels; a multiple of ``cell``.
        cell: side of one content cell in pixels (use the tubelet's spatial size).
        num_classes: action classes, 2..8 motion directions.
        wavelength: period of the actor's plaid in pixels; divides ``2 * cell``.
        marking_period: period in pixels of the square-wave stripes on the actor (the ``face``
            attribute is their orientation); divides ``2 * cell``. Their phase is drawn among
            the multiples of gcd(speed, marking_period), the phases the motion reaches, so that
            no single frame depends on the class; at the default speed (= period) that is one
            phase, the stripes lying on the same pixels in every frame, which is what lets the
            protocol's small attackers read them.
        speed: displacement of the plaid per frame in pixels (a quarter period by default, so
            consecutive frames are in quadrature and the direction is unambiguous).
        num_static_distractors: cells of static clutter (a 4 x 4 grid has 16 cells: the actor's
            4, the 3 scene glyphs', and these with the flickering ones).
        num_flicker_distractors: cells that blink at random frames.
        noise_std: standard deviation of the per-pixel Gaussian noise.
    """

    frames: int = 8
    size: int = 32
    cell: int = 8
    num_classes: int = 4
    wavelength: int = 16
    marking_period: int = 4
    speed: int = 4
    num_static_distractors: int = 5
    num_flicker_distractors: int = 1
    noise_std: float = 0.05

    def __post_init__(self) -> None:
        if self.frames < 2:
            raise ConfigError(f"frames must be >= 2 (the action is motion), got {self.frames}")
        if self.cell < 4 or self.size % self.cell != 0:
            raise ConfigError(f"size must be a multiple of cell (>= 4), got size={self.size}, cell={self.cell}")
        if not 2 <= self.num_classes <= len(DIRECTIONS):
            raise ConfigError(f"num_classes must be in [2, {len(DIRECTIONS)}], got {self.num_classes}")
        if self.wavelength < 2 or (2 * self.cell) % self.wavelength:
            raise ConfigError(f"wavelength must be >= 2 and divide 2 * cell = {2 * self.cell}, got {self.wavelength}")
        if self.marking_period < 2 or self.marking_period % 2 or (2 * self.cell) % self.marking_period:
            # Even: half a period bright, half dark, so the stripes have zero mean.
            raise ConfigError(f"marking_period must be even and divide 2 * cell = {2 * self.cell}, "
                             f"got {self.marking_period}")
        if self.speed < 1 or (2 * self.speed) % self.wavelength == 0:
            # A shift of a half period (or a whole one) looks the same in both directions.
            raise ConfigError(f"speed must be >= 1 and not a multiple of wavelength / 2, got {self.speed}")
        if self.noise_std < 0:
            raise ConfigError(f"noise_std must be >= 0, got {self.noise_std}")
        grid = self.size // self.cell
        needed = 4 + len(SCENE_ATTRIBUTES) + self.num_static_distractors + self.num_flicker_distractors
        if grid < 2 or grid * grid < needed:
            raise ConfigError(
                f"a {grid}x{grid} grid of cells cannot hold the actor (4 cells), {len(SCENE_ATTRIBUTES)} privacy "
                f"cells and "
                f"{self.num_static_distractors + self.num_flicker_distractors} distractors; "
                f"increase size or reduce cell"
            )


def _unit_coords(cell: int) -> tuple[Tensor, Tensor]:
    """Pixel-center coordinates in [0, 1] of a cell, as (y, x) each Tensor[cell, cell]."""
    c = (torch.arange(cell, dtype=torch.float32) + 0.5) / cell
    return torch.meshgrid(c, c, indexing="ij")


def _glyph(name: str, value: int, cell: int, g: torch.Generator) -> Tensor:
    """One attribute's glyph, Tensor[3, cell, cell], centered in the cell: its color names the
    attribute, its shape gives the value (two shapes of about equal area per attribute, so the
    value is in the arrangement of the pixels, not in how much color there is)."""

    def u(lo: float, hi: float) -> float:
        return lo + (hi - lo) * torch.rand((), generator=g).item()

    y, x = _unit_coords(cell)
    color = torch.tensor(_GLYPH_COLORS[name]) * u(0.8, 1.1)
    cy = cx = 0.5  # centered in its cell: the cell itself is placed at random
    if name == "gender":
        # A restroom-sign figure: a dress, wide at the bottom (1), or shoulders, wide at the top
        # (0). The same triangle upside down: equal area, so only the shape tells them apart.
        h = 0.8
        down = (y - cy + h / 2) if value else (cy + h / 2 - y)  # distance from the narrow end
        mask = ((abs(y - cy) < h / 2) & (abs(x - cx) < 0.06 + 0.55 * down)).float()
        return color[:, None, None] * mask
    if name == "nudity":
        # A body of bare skin, one solid patch (1), or covered by a dark garment (left at the
        # background's darkness) with only a rim of skin around it (0): 24 and 20 pixels of skin
        # at 8 x 8, told apart by shape.
        if value:
            skin = (abs(y - cy) < 0.35) & (abs(x - cx) < 0.2)
        else:
            skin = (abs(y - cy) < 0.4) & (abs(x - cx) < 0.4) & ~((abs(y - cy) < 0.25) & (abs(x - cx) < 0.25))
        return color[:, None, None] * skin.float()
    if name == "relationship":  # two people side by side (1) or one person alone (0)
        # Upright figures of equal total area: two narrow ones with a gap between them, or one wide.
        tall = abs(y - cy) < 0.38
        if value:
            mask = tall & (abs(abs(x - cx) - 0.28) < 0.13)
        else:
            mask = tall & (abs(x - cx) < 0.26)
        return color[:, None, None] * mask.float()
    raise ConfigError(f"unknown privacy attribute {name!r}; expected one of {PRIVACY_ATTRIBUTES}")


def _clutter(cell: int, g: torch.Generator) -> Tensor:
    """A static distractor, Tensor[3, cell, cell]: a near-grey rectangle (a tint of at most
    +-0.05 per channel, so that it never takes a glyph's color) or a grey noise texture."""
    if torch.rand((), generator=g).item() < 0.5:
        y, x = _unit_coords(cell)
        lo = torch.rand(2, generator=g) * 0.5
        hi = lo + 0.25 + torch.rand(2, generator=g) * 0.25
        mask = ((y >= lo[0]) & (y <= hi[0]) & (x >= lo[1]) & (x <= hi[1])).float()
        gray = 0.2 + 0.5 * torch.rand((), generator=g)
        return (gray + 0.1 * (torch.rand(3, 1, 1, generator=g) - 0.5)) * mask
    return 0.6 * torch.rand(1, cell, cell, generator=g).expand(3, -1, -1)


def render_actor(
    side: int, frames: int, velocity: tuple[int, int], y0: int, x0: int, wavelength: int, contrast: float,
    brightness: float,
) -> Tensor:
    """A plaid (a vertical plus a horizontal sinusoidal grating) with phase offsets (y0, x0),
    drifting by ``velocity`` pixels per frame on a ``side x side`` torus: Tensor[3, frames,
    side, side]. Frame t+1 is frame t rolled by ``velocity``, exactly, because offsets and
    velocities are whole pixels and ``wavelength`` divides ``side``."""
    t = torch.arange(frames, dtype=torch.float32)[:, None, None]
    pix = torch.arange(side, dtype=torch.float32)
    k = 2 * math.pi / wavelength
    phase_y = k * (pix[None, :, None] - y0 - velocity[0] * t)
    phase_x = k * (pix[None, None, :] - x0 - velocity[1] * t)
    plaid = brightness + 0.5 * contrast * (torch.cos(phase_y) + torch.cos(phase_x))
    return plaid.unsqueeze(0).expand(3, -1, -1, -1)


def render_marking(side: int, frames: int, velocity: tuple[int, int], offset: int, across: bool, period: int,
                   contrast: float) -> Tensor:
    """A fine grating riding on the actor (its "face"): square-wave stripes, ``period / 2`` pixels
    bright then ``period / 2`` dark, across the actor (``across``, varying along y) or along it
    (along x), at ``offset`` in frame 0 and moving with ``velocity`` like the actor's texture, so
    the actor region stays one rigidly moving pattern: Tensor[frames, side, side], values
    ``+-contrast / 2`` (zero mean; ``period`` is even).

    Square stripes rather than a sampled cosine: at a period of 4 pixels a cosine sampled on the
    pixel grid is zero on half the pixels for half the offsets, while the stripes mark every
    pixel at every offset, twice the energy at the same peak contrast."""
    t = torch.arange(frames, dtype=torch.float32)[:, None, None]
    pix = torch.arange(side, dtype=torch.float32)
    if across:
        position = pix[None, :, None] - offset - velocity[0] * t + 0 * pix[None, None, :]
    else:
        position = pix[None, None, :] - offset - velocity[1] * t + 0 * pix[None, :, None]
    bright = torch.remainder(position, period) < period / 2
    return 0.5 * contrast * (2 * bright.float() - 1)


def _actor(spec: SyntheticSpec, label: int, face: bool, warm: bool, g: torch.Generator) -> Tensor:
    """The actor region of a video of class ``label``, Tensor[3, T, 2*cell, 2*cell]: the
    drifting plaid tinted warm or cool (``skin_color``), with a fine marking riding on it whose
    orientation is the ``face`` attribute.

    The phase offsets and the head's position are uniform over the torus and the other draws
    ignore the label, so each single frame has the same distribution for every class."""
    side = 2 * spec.cell
    y0 = torch.randint(side, (), generator=g).item()
    x0 = torch.randint(side, (), generator=g).item()
    contrast = 0.2 + 0.1 * torch.rand((), generator=g).item()
    brightness = 0.45 + 0.15 * torch.rand((), generator=g).item()
    velocity = (DIRECTIONS[label][0] * spec.speed, DIRECTIONS[label][1] * spec.speed)
    plaid = render_actor(side, spec.frames, velocity, y0, x0, spec.wavelength, contrast, brightness)
    # Equal brightness either way: the tint moves red against blue, green stays.
    strength = 0.15 + 0.1 * torch.rand((), generator=g).item()
    sign = 1.0 if warm else -1.0
    plaid = plaid * torch.tensor([1 + sign * strength, 1.0, 1 - sign * strength])[:, None, None, None]
    # The stripes' phase on the pixel grid: uniform over the phases the motion can reach from it
    # (multiples of gcd(speed, period)), so every frame has the same distribution for every class.
    step = math.gcd(spec.speed, spec.marking_period)
    offset = step * torch.randint(spec.marking_period // step, (), generator=g).item()
    marking_contrast = 0.3 + 0.1 * torch.rand((), generator=g).item()
    marking = render_marking(side, spec.frames, velocity, offset, face, spec.marking_period, marking_contrast)
    return plaid + marking


# Codes of the layout map returned by make_video(..., return_layout=True).
CELL_BACKGROUND, CELL_ACTOR, CELL_STATIC, CELL_FLICKER = 0, 1, 2, 3
CELL_PRIVACY = 4  # CELL_PRIVACY + k is the cell of SCENE_ATTRIBUTES[k] (the actor carries the others)


def make_video(spec: SyntheticSpec, seed: int, return_layout: bool = False):
    """Generate one video from a seed.

    Returns:
        (video, action, privacy): Tensor[3, T, H, W] float32 in [0, 1], an int in
        [0, num_classes), Tensor[5] float32 of 0/1 in the order of ``PRIVACY_ATTRIBUTES``;
        with ``return_layout`` also Tensor[grid, grid] int64 of ``CELL_*`` codes saying what
        each cell holds (for diagnostics: which tubelets a sparsifier keeps).
    """
    g = torch.Generator().manual_seed(seed)
    grid, cell, T = spec.size // spec.cell, spec.cell, spec.frames
    action = torch.randint(spec.num_classes, (), generator=g).item()
    privacy = torch.randint(2, (len(PRIVACY_ATTRIBUTES),), generator=g).float()

    background = 0.05 + 0.15 * torch.rand(3, 1, 1, 1, generator=g)
    video = background.expand(3, T, spec.size, spec.size).clone()

    # Layout: the actor's 2x2 block first, then the other kinds of cell in the remaining ones.
    ay, ax = torch.randint(grid - 1, (2,), generator=g).tolist()
    actor_cells = {(ay + i, ax + j) for i in range(2) for j in range(2)}
    free = [(i, j) for i in range(grid) for j in range(grid) if (i, j) not in actor_cells]
    order = torch.randperm(len(free), generator=g).tolist()
    free = [free[k] for k in order]

    layout = torch.full((grid, grid), CELL_BACKGROUND, dtype=torch.long)
    layout[ay : ay + 2, ax : ax + 2] = CELL_ACTOR
    value = dict(zip(PRIVACY_ATTRIBUTES, privacy.bool().tolist()))
    actor = _actor(spec, action, value["face"], value["skin_color"], g)
    video[:, :, ay * cell : (ay + 2) * cell, ax * cell : (ax + 2) * cell] += actor

    def paint(ij: tuple[int, int], patch: Tensor, code: int, frames: Tensor | slice = slice(None)) -> None:
        i, j = ij
        layout[i, j] = code
        region = video[:, frames, i * cell : (i + 1) * cell, j * cell : (j + 1) * cell]
        video[:, frames, i * cell : (i + 1) * cell, j * cell : (j + 1) * cell] = torch.maximum(
            region, patch[:, None]
        )

    for k, name in enumerate(SCENE_ATTRIBUTES):
        paint(free[k], _glyph(name, int(value[name]), cell, g), CELL_PRIVACY + k)
    rest = free[len(SCENE_ATTRIBUTES) :]
    for ij in rest[: spec.num_static_distractors]:
        paint(ij, _clutter(cell, g), CELL_STATIC)
    for ij in rest[spec.num_static_distractors : spec.num_static_distractors + spec.num_flicker_distractors]:
        on = torch.rand(T, generator=g) < 0.5
        paint(ij, _clutter(cell, g), CELL_FLICKER, on)

    if spec.noise_std > 0:
        video += spec.noise_std * torch.randn(video.shape, generator=g)
    video = video.clamp_(0, 1)
    return (video, action, privacy, layout) if return_layout else (video, action, privacy)


class SyntheticVideos(Dataset):
    """The embedded benchmark as a map-style dataset, generated on the fly.

    Args:
        split: "train", "test" or "val"; splits draw from disjoint seed streams.
        num_videos: number of videos in the split.
        seed: benchmark seed; the same (seed, split, index) always gives the same video.
        **spec: fields of :class:`SyntheticSpec` (frames, size, cell, num_classes, ...).

    Items are ``(video Tensor[3, T, H, W] in [0, 1], action int, privacy Tensor[5])``.
    """

    attributes = PRIVACY_ATTRIBUTES
    multilabel_actions = False  # one motion direction per video

    def __init__(self, split: str = "train", num_videos: int = 512, seed: int = 0, **spec) -> None:
        if split not in _SPLIT_OFFSET:
            raise ConfigError(f"split must be one of {sorted(_SPLIT_OFFSET)}, got {split!r}")
        if num_videos < 1:
            raise ConfigError(f"num_videos must be >= 1, got {num_videos}")
        self.spec = SyntheticSpec(**spec)
        self.split, self.num_videos, self.seed = split, num_videos, seed
        self.num_classes = self.spec.num_classes
        self.num_attributes = len(PRIVACY_ATTRIBUTES)

    def __len__(self) -> int:
        return self.num_videos

    def video_seed(self, index: int) -> int:
        # A fixed arithmetic mix (not hash(), which Python salts per process).
        return (self.seed * 1_000_003 + _SPLIT_OFFSET[self.split]) * 10_000_019 + index

    def __getitem__(self, index: int) -> tuple[Tensor, int, Tensor]:
        if not -self.num_videos <= index < self.num_videos:
            raise IndexError(f"index {index} out of range for {self.num_videos} videos")
        return make_video(self.spec, self.video_seed(index % self.num_videos))

    def layout(self, index: int) -> Tensor:
        """What each cell of video ``index`` holds: Tensor[grid, grid] of ``CELL_*`` codes."""
        return make_video(self.spec, self.video_seed(index % self.num_videos), return_layout=True)[3]

    def person_region(self, index: int) -> Tensor:
        """Where the person (the actor) is in video ``index``: Tensor[T, H, W] bool, the same in
        every frame (the actor's texture drifts inside a fixed 2x2-cell region).

        The person-region baselines (``stprivacy.methods.baselines``) read it instead of running
        a person detector, which would find nothing in these videos. It regenerates the video,
        so it costs as much as ``self[index]``."""
        pixels = actor_region(self.layout(index), self.spec.cell)
        return pixels.expand(self.spec.frames, -1, -1).contiguous()


def actor_region(layout: Tensor, cell: int) -> Tensor:
    """The actor's pixels of a video: Tensor[H, W] bool, from its Tensor[grid, grid] ``layout``
    (``make_video(..., return_layout=True)``) and the cell size in pixels."""
    return (layout == CELL_ACTOR).repeat_interleave(cell, 0).repeat_interleave(cell, 1)


def actor_keep_masks(dataset: SyntheticVideos, time_steps: int) -> Tensor:
    """The oracle sparsifier's masks: ``Tensor[M, time_steps, grid * grid]``, 1 exactly on each
    video's actor cells at every time step (tubelets of ``cell x cell`` pixels). Keeping these
    keeps the whole action and removes the scene attributes, but not the actor's own."""
    masks = [(dataset.layout(i) == CELL_ACTOR).flatten().float() for i in range(len(dataset))]
    return torch.stack(masks)[:, None, :].expand(-1, time_steps, -1).contiguous()


def materialize(dataset: Dataset) -> torch.utils.data.TensorDataset:
    """Generate every item once into memory: (videos [M,3,T,H,W], actions [M], privacy [M,P]).

    Worth it whenever a dataset is iterated many times (the demo trains a dozen models on it).
    The copy keeps what the dataset declares (``num_classes``, ``num_attributes``,
    ``attributes``), so the attack protocol takes it as it takes the dataset.
    """
    videos, actions, privacy = [], [], []
    for i in range(len(dataset)):
        v, a, p = dataset[i]
        videos.append(v)
        actions.append(a)
        privacy.append(p)
    copy = torch.utils.data.TensorDataset(
        torch.stack(videos), torch.tensor(actions, dtype=torch.long), torch.stack(privacy)
    )
    for name in ("num_classes", "num_attributes", "attributes"):
        if hasattr(dataset, name):
            setattr(copy, name, getattr(dataset, name))
    return copy


__all__ = [
    "ACTOR_ATTRIBUTES",
    "DIRECTIONS",
    "PRIVACY_ATTRIBUTES",
    "SCENE_ATTRIBUTES",
    "SyntheticSpec",
    "SyntheticVideos",
    "actor_keep_masks",
    "actor_region",
    "make_video",
    "materialize",
    "render_actor",
]
