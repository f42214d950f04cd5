"""Tile configurations of the masked-attention kernels for H100 / H200 (sm_90).

No autotuning at call time: every call takes one pinned configuration, chosen from the inputs'
class (16-bit or float32, head dim <= 64 or <= 128, N <= 512 or longer), so a new shape costs one
compile, not a sweep. The two N classes are the paper's shapes: 392 tokens (8 x 14 x 14, ViT-S at
224 px) and 1568 (16 x 14 x 14). ``candidate_configs`` lists the pinned configuration first and
then the alternatives worth trying on a device; the CUDA tests check that every candidate computes
the same function.

Where the numbers come from: the structure is the Triton fused-attention tutorial's (forward: a
large query tile streaming key tiles; dk/dv: a key tile and a small query step; dq: the mirror
image); the pinned tile of each class is one that ``python benchmarks/compile_facts.py`` compiles
for sm_90 without spilling registers (table in benchmarks/RESULTS.md). They have not been timed on
a GPU yet, so they are spill-free starting points, not the fastest tiles.
Why some are small: the dk/dv program loops over the heads (it owns dkeep's head sum), which keeps
more state live than one head would, so its query step is 16 rows. float32 runs 3xTF32 products,
which hold each operand's high and low halves in registers: at head dim 128 only 16-row tiles
fit (the dk/dv one unpipelined, num_stages 1).
Tile choices at N = 392: a 64-row tile wastes 12.5% of the work on padding (448 rows), a 128-row
one 23% (512 rows). The dk/dv kernel runs one program per (key block, batch), so its key tile
stays at <= 64 to keep B * N / 64 programs (224 at B32 N392, 200 at B8 N1568) for 132 SMs.
"""
from __future__ import annotations

import torch
import triton

STAGES = ("fwd", "dkdv", "dq")


def _configs(*shapes: tuple[int, int, int, int]) -> list[triton.Config]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) tuples as triton.Configs."""
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=warps, num_stages=stages)
        for bm, bn, warps, stages in shapes
    ]


# CONFIGS[stage][(precision class, head-dim class, length class)]: pinned first, then alternatives.
CONFIGS: dict[str, dict[tuple[str, str, str], list[triton.Config]]] = {
    "fwd": {
        ("16bit", "d<=64", "short"): _configs((64, 64, 4, 3), (128, 64, 8, 3), (64, 32, 4, 4)),
        ("16bit", "d<=64", "long"): _configs((128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3)),
        ("16bit", "d<=128", "short"): _configs((64, 32, 4, 3), (128, 32, 8, 2), (64, 32, 4, 2)),
        ("16bit", "d<=128", "long"): _configs((128, 32, 8, 2), (64, 32, 4, 3)),
        ("fp32", "d<=64", "short"): _configs((64, 32, 4, 3), (128, 32, 8, 2)),
        ("fp32", "d<=64", "long"): _configs((128, 32, 8, 2), (64, 32, 4, 3)),
        ("fp32", "d<=128", "short"): _configs((16, 32, 4, 2), (16, 16, 4, 2)),
        ("fp32", "d<=128", "long"): _configs((16, 32, 4, 2), (16, 16, 4, 2)),
    },
    "dkdv": {
        ("16bit", "d<=64", "short"): _configs((16, 64, 8, 2), (16, 32, 4, 2), (32, 64, 8, 1)),
        ("16bit", "d<=64", "long"): _configs((16, 64, 8, 2), (16, 32, 4, 2), (32, 128, 8, 1)),
        ("16bit", "d<=128", "short"): _configs((16, 32, 8, 2), (16, 32, 4, 1), (16, 16, 4, 2)),
        ("16bit", "d<=128", "long"): _configs((16, 32, 8, 2), (16, 32, 4, 1)),
        ("fp32", "d<=64", "short"): _configs((16, 32, 8, 2), (16, 16, 4, 2)),
        ("fp32", "d<=64", "long"): _configs((16, 32, 8, 2), (16, 16, 4, 2)),
        ("fp32", "d<=128", "short"): _configs((16, 16, 8, 1), (16, 16, 8, 2)),
        ("fp32", "d<=128", "long"): _configs((16, 16, 8, 1), (16, 16, 8, 2)),
    },
    "dq": {
        ("16bit", "d<=64", "short"): _configs((64, 32, 4, 3), (128, 32, 8, 2), (64, 64, 4, 2)),
        ("16bit", "d<=64", "long"): _configs((128, 32, 8, 2), (64, 32, 4, 3), (128, 64, 8, 2)),
        ("16bit", "d<=128", "short"): _configs((64, 32, 4, 2), (128, 32, 8, 2)),
        ("16bit", "d<=128", "long"): _configs((128, 32, 8, 2), (64, 32, 4, 2)),
        ("fp32", "d<=64", "short"): _configs((64, 16, 4, 2), (128, 16, 8, 2)),
        ("fp32", "d<=64", "long"): _configs((128, 16, 8, 2), (64, 16, 4, 2)),
        ("fp32", "d<=128", "short"): _configs((16, 32, 4, 2), (64, 32, 4, 2)),
        ("fp32", "d<=128", "long"): _configs((16, 32, 4, 2), (64, 32, 4, 2)),
    },
}
SHORT_N = 512


def input_class(head_dim: int, n: int, dtype: torch.dtype) -> tuple[str, str, str]:
    """The key of CONFIGS for these inputs."""
    return (
        "fp32" if dtype == torch.float32 else "16bit",
        "d<=64" if head_dim <= 64 else "d<=128",
        "short" if n <= SHORT_N else "long",
    )


def candidate_configs(stage: str, head_dim: int, n: int, dtype: torch.dtype) -> list[triton.Config]:
    """The configurations of a stage ("fwd", "dkdv", "dq") for these inputs, the pinned one first.

    Tiles far beyond the sequence are dropped (a 128-row tile for N = 20 would be mostly padding);
    if none is left, the pinned one is clipped to the sequence (16 rows at least, for ``tl.dot``).
    """
    if stage not in CONFIGS:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    configs = CONFIGS[stage][input_class(head_dim, n, dtype)]
    n_cap = max(16, triton.next_power_of_2(n))
    fitting = [c for c in configs if c.kwargs["BLOCK_M"] <= n_cap and c.kwargs["BLOCK_N"] <= n_cap]
    if fitting:
        return fitting
    pinned = configs[0]
    clipped = {name: min(size, n_cap) for name, size in pinned.kwargs.items()}
    return [triton.Config(clipped, num_warps=pinned.num_warps, num_stages=pinned.num_stages)]


def pinned_config(stage: str, head_dim: int, n: int, dtype: torch.dtype) -> triton.Config:
    """The configuration every call with these inputs runs."""
    return candidate_configs(stage, head_dim, n, dtype)[0]
