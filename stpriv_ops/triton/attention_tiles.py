"""Tile loads and stores shared by the masked-attention kernels.

Tensors are ``[B, H, N, d]`` with any strides, read in place: no copy, no padding. A tile is
``[rows, BLOCK_D]`` with ``BLOCK_D`` the head dim rounded up to a power of two >= 16 (what
``tl.dot`` needs); the columns past the true head dim load as zeros, which change no score and
no output column, and are never stored. Masks cost per-element work, so each one is compiled in
only where it can be false: rows only in blocks that may pass N (``CHECK_ROWS``), columns only
when the head dim is not a power of two.
"""
from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634
# Kernels may read globals only when they are constexpr.
LOG2E_C = tl.constexpr(LOG2E)


@triton.jit
def query_block(H, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """The program's query block, grid = (query blocks, B * H): (its first row, the (b, h) index in
    64 bits for the pointer bases, b, h, its rows, one key block's offsets, the head-dim offsets)."""
    start_m = tl.program_id(0) * BLOCK_M
    off_bh = tl.program_id(1).to(tl.int64)
    return (start_m, off_bh, off_bh // H, off_bh % H, start_m + tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_N),
            tl.arange(0, BLOCK_D))


@triton.jit
def tile_ptrs(X_ptr, off_b, off_h, rows, offs_d, stride_b, stride_h, stride_n, stride_d):
    """Pointers to ``X[off_b, off_h, rows, :BLOCK_D]``; off_b and off_h are int64."""
    return X_ptr + off_b * stride_b + off_h * stride_h + rows[:, None] * stride_n + offs_d[None, :] * stride_d


@triton.jit
def load_tile(ptrs, rows, N, offs_d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CHECK_ROWS: tl.constexpr):
    """Loads a ``[rows, BLOCK_D]`` tile, zeros past row N (if CHECK_ROWS) and past the head dim."""
    if CHECK_ROWS:
        tile = tl.load(ptrs, mask=(rows < N)[:, None] & (offs_d < HEAD_DIM)[None, :], other=0.0)
    elif BLOCK_D != HEAD_DIM:
        tile = tl.load(ptrs, mask=(offs_d < HEAD_DIM)[None, :], other=0.0)
    else:
        tile = tl.load(ptrs)
    return tile


@triton.jit
def store_tile(ptrs, value, rows, N, offs_d, HEAD_DIM: tl.constexpr):
    """Stores the rows < N and columns < HEAD_DIM of a tile, in the pointers' dtype."""
    tl.store(ptrs, value.to(ptrs.dtype.element_ty), mask=(rows < N)[:, None] & (offs_d < HEAD_DIM)[None, :])


@triton.jit
def load_keep(keep_ptrs, cols, N, CHECK_ROWS: tl.constexpr):
    """keep_j as float32; keys past N load 0, so they weigh nothing."""
    if CHECK_ROWS:
        keep = tl.load(keep_ptrs, mask=cols < N, other=0.0)
    else:
        keep = tl.load(keep_ptrs)
    return keep.to(tl.float32)


@triton.jit
def load_row_stats(RowMax_ptr, RowSum_ptr, stats, rows, N, CHECK_ROWS: tl.constexpr):
    """The forward's ``m_i`` in log2 units and ``log2 Z_i`` (1 and 0 past row N, so those add 0).

    ``row_max * log2(e)`` is the same float32 product the forward took for its reference point, so
    ``exp2(s * qk_scale - m2 - log2 Z)`` recomputes the forward's ``e_ij / Z_i`` consistently.
    """
    if CHECK_ROWS:
        valid = rows < N
        m2 = tl.load(RowMax_ptr + stats, mask=valid, other=0.0) * LOG2E_C
        log2_z = tl.log2(tl.load(RowSum_ptr + stats, mask=valid, other=1.0))
    else:
        m2 = tl.load(RowMax_ptr + stats) * LOG2E_C
        log2_z = tl.log2(tl.load(RowSum_ptr + stats))
    return m2, log2_z


def block_d(head_dim: int) -> int:
    """The tile width for a head dim: a power of two >= 16."""
    return max(16, triton.next_power_of_2(head_dim))
