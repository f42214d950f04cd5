"""Triton kernels of masked attention against the float64 oracle.

Without a GPU the launchers run on CPU tensors under Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1); with one, the same tests run on CUDA tensors, and the tests marked ``cuda``
also go through ``torch.ops.stpriv`` and autograd, bfloat16 included.

Error rule (flash-attention's): a kernel's error against the float64 oracle is at most twice the
error of the same-dtype eager PyTorch attention (DynamicViT's ``softmax_with_policy``, which is what
the STPrivacy release runs) plus a small absolute slack, both relative to the oracle's largest entry.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

triton = pytest.importorskip("triton", reason="triton is not installed: the Triton kernels cannot be tested")

import stpriv_ops  # noqa: E402
from stpriv_ops import reference  # noqa: E402
from stpriv_ops.triton import masked_attention as triton_ma  # noqa: E402
from stpriv_ops.triton import masked_attention_tuning as tuning  # noqa: E402

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
if INTERPRET:
    DEVICE = "cpu"
elif torch.cuda.is_available():
    DEVICE = "cuda"
else:
    pytest.skip("no CUDA device and TRITON_INTERPRET is not 1", allow_module_level=True)

# numpy (the interpreter) warns on log2(0) = -inf, which is how the forward zeroes dropped keys.
pytestmark = pytest.mark.filterwarnings("ignore:divide by zero encountered in log2:RuntimeWarning")

# Fixed tiles, BLOCK_M != BLOCK_N on purpose, so the diagonal ranges of unequal tiles are
# exercised; small ones under the interpreter, where every tile op is a numpy call.
BLOCKS = (
    {"fwd": (32, 16), "dkdv": (16, 32), "dq": (32, 16)} if INTERPRET
    else {"fwd": (64, 32), "dkdv": (32, 64), "dq": (64, 32)}
)
# Absolute slack, relative to the oracle's largest entry or 1, whichever is larger (inputs are O(1),
# and some gradients, dq and dk at N = 1 or with every key dropped, are exactly 0). For fp16/bf16
# the output's is one unit in the last place: flash-style kernels round the unnormalized
# probabilities to the input dtype, so with every key dropped they miss out_i = v_i by an ulp where
# eager is exact; the gradients' is four, since delta_i = dout_i . out_i uses that rounded output
# and scale * |dout| |k| carries it into dq and dk.
# float32 on a GPU multiplies as 3xTF32 (about 2^-21 per product, not fp32's 2^-24): more slack.
SLACK = {torch.float32: (2e-6, 2e-6), torch.float16: (2**-10, 2**-8), torch.bfloat16: (2**-7, 2**-5)}
SLACK_3XTF32 = (1e-5, 1e-5)
OUTPUTS = ("out", "dq", "dk", "dv", "dkeep")


@dataclass(frozen=True)
class Case:
    B: int
    H: int
    N: int
    d: int
    dtype: torch.dtype = torch.float32
    keep: str = "hard"  # hard | soft | zeros | ones
    eps: float = 1e-6
    scale: float | None = None
    magnitude: float = 1.0  # input scale; 4 gives scores of a few hundred
    strided: bool = False  # q, k, v as views of one fused qkv tensor, keep a strided view
    negative_scores: bool = False  # q > 0 > k: every score < 0, so a zero-padded key would be the max


def make_inputs(case: Case, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    B, H, N, d = case.B, case.H, case.N, case.d
    if case.strided:  # timm's layout: qkv Linear output [B, N, 3, H, d] permuted to [3, B, H, N, d]
        qkv = torch.randn(B, N, 3, H, d, generator=g).permute(2, 0, 3, 1, 4)
        q, k, v = (case.magnitude * qkv[i] for i in range(3))
    else:
        q, k, v = (case.magnitude * torch.randn(B, H, N, d, generator=g) for _ in range(3))
    if case.negative_scores:
        q, k = q.abs() + 0.5, -(k.abs() + 0.5)
    keep = {
        "hard": (torch.rand(B, N, generator=g) < 0.6).float(),
        "soft": torch.rand(B, N, generator=g),
        "zeros": torch.zeros(B, N),
        "ones": torch.ones(B, N),
    }[case.keep]
    if case.strided:
        keep = torch.stack([keep, torch.rand(B, N, generator=g)], dim=-1)[..., 0]
    grad_out = torch.randn(B, H, N, d, generator=g)
    q, k, v, grad_out = (t.to(device=device, dtype=case.dtype) for t in (q, k, v, grad_out))
    return q, k, v, keep.to(device), grad_out


def oracle(q, k, v, keep, grad_out, scale, eps):
    """float64 reference: out, the four gradients, and the statistics m_i and Z_i."""
    leaves = [t.detach().to(torch.float64).requires_grad_() for t in (q, k, v, keep)]
    out = reference.masked_attention(*leaves, scale, eps)
    grads = torch.autograd.grad(out, leaves, grad_out.to(torch.float64))
    q64, k64, _, keep64 = (t.detach() for t in leaves)
    n, d = q.shape[-2:]
    scores = (d**-0.5 if scale is None else scale) * (q64 @ k64.transpose(-2, -1))
    row_max = scores.amax(dim=-1)
    eye = torch.eye(n, dtype=torch.float64, device=q.device)
    w = keep64[:, None, None, :] * (1 - eye) + eye
    row_sum = (w * torch.exp(scores - row_max[..., None])).sum(dim=-1) + eps
    return dict(zip(OUTPUTS, (out.detach(), *grads))), row_max, row_sum


def same_dtype_eager(q, k, v, keep, grad_out, scale, eps):
    """DynamicViT's softmax_with_policy attention in the inputs' dtype, and its autograd gradients."""
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v, keep)]
    q_, k_, v_, keep_ = leaves
    n, d = q.shape[-2:]
    attn = (q_ @ k_.transpose(-2, -1)) * (d**-0.5 if scale is None else scale)
    policy = keep_.to(q.dtype)[:, None, None, :]
    eye = torch.eye(n, dtype=q.dtype, device=q.device)
    policy = policy + (1 - policy) * eye
    attn = attn - attn.amax(dim=-1, keepdim=True).detach()
    attn = attn.float().exp() * policy.float()
    attn = (attn + eps / n) / (attn.sum(dim=-1, keepdim=True) + eps)
    out = attn.to(q.dtype) @ v_
    grads = torch.autograd.grad(out, leaves, grad_out)
    return dict(zip(OUTPUTS, (out.detach(), *grads)))


def max_error(got, expected) -> float:
    return (got.to(torch.float64) - expected).abs().max().item()


def max_abs_score(q, k, scale) -> float:
    d = q.shape[-1]
    return ((d**-0.5 if scale is None else abs(scale)) * (q.double() @ k.double().transpose(-2, -1))).abs().max().item()


def assert_within_rule(got: dict, expected: dict, baseline: dict, dtype: torch.dtype, max_score: float = 0.0) -> None:
    """The error rule; ``max_score`` = max |S_ij| widens the float32 gradients' slack (see below).

    A flash-style backward recomputes the scores in float32 where eager autograd reads back the
    probabilities it stored: a score S is recomputed to within ulp(|S|), about 2^-23 |S|, which
    perturbs its probability by that relative amount (1e-5 at the scores of a few hundred that
    ``large_scores`` and ``negative_scores_tail`` reach), more than eager's float32 error.
    """
    for name in OUTPUTS:
        assert torch.isfinite(got[name]).all(), f"{name} has non-finite entries"
        assert got[name].dtype == baseline[name].dtype, f"{name}: dtype {got[name].dtype}"
        magnitude = expected[name].abs().max().item()
        err = max_error(got[name], expected[name])
        baseline_err = max_error(baseline[name], expected[name])
        if not math.isfinite(baseline_err):  # eager overflowed (fp16 dkeep at large scores): no credit
            baseline_err = 0.0
        slack = SLACK_3XTF32 if dtype == torch.float32 and got[name].is_cuda else SLACK[dtype]
        relative_slack = slack[name != "out"]
        if dtype == torch.float32 and name != "out":
            relative_slack += 2**-23 * max_score
        allowed = 2 * baseline_err + relative_slack * max(magnitude, 1.0)
        assert err <= allowed, f"{name}: error {err:.3e} > allowed {allowed:.3e} (|max| {magnitude:.3e})"


def run_kernels(q, k, v, keep, grad_out, scale, eps, blocks=BLOCKS):
    out, row_max, row_sum = triton_ma.masked_attention_forward(q, k, v, keep, scale, eps, blocks=blocks)
    grads = triton_ma.masked_attention_backward(
        grad_out, q, k, v, keep, out, row_max, row_sum, scale, eps, blocks=blocks
    )
    return dict(zip(OUTPUTS, (out, *grads))), row_max, row_sum


CASES = {
    "n1": Case(1, 2, 1, 16),
    "odd_n37_soft_d32": Case(2, 2, 37, 32, keep="soft"),
    "n130_hard_d64": Case(1, 2, 130, 64),
    "d128": Case(1, 1, 21, 128),
    "all_dropped_eps0": Case(1, 2, 37, 16, keep="zeros", eps=0.0),
    "all_kept": Case(1, 2, 37, 16, keep="ones"),
    "large_scores": Case(1, 2, 37, 16, magnitude=4.0),
    "negative_scores_tail": Case(1, 2, 37, 16, negative_scores=True, scale=8.0),  # every S_ij < -120
    "large_eps": Case(1, 2, 37, 16, keep="soft", eps=0.3),
    "d24_negative_scale_strided": Case(2, 2, 45, 24, scale=-0.3, strided=True),
    "fp16_n130_d64": Case(1, 2, 130, 64, dtype=torch.float16),
    "fp16_odd_soft_d32": Case(2, 2, 37, 32, dtype=torch.float16, keep="soft"),
    "fp16_dropped_eps0_d16": Case(1, 2, 50, 16, dtype=torch.float16, keep="zeros", eps=0.0),
    "fp16_large_scores": Case(1, 2, 37, 16, dtype=torch.float16, magnitude=3.0),
}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_kernels_match_float64_oracle(case):
    q, k, v, keep, grad_out = make_inputs(case, DEVICE)
    got, row_max, row_sum = run_kernels(q, k, v, keep, grad_out, case.scale, case.eps)
    expected, max64, sum64 = oracle(q, k, v, keep, grad_out, case.scale, case.eps)
    baseline = same_dtype_eager(q, k, v, keep, grad_out, case.scale, case.eps)
    assert_within_rule(got, expected, baseline, case.dtype, max_abs_score(q, k, case.scale))
    assert row_max.dtype == row_sum.dtype == torch.float32
    # Stats from fp16 inputs are exact-product fp32 sums: float32-level error in the scores.
    stat_tol = 1e-5 * (1 + max64.abs().max().item())
    torch.testing.assert_close(row_max.double(), max64, rtol=0, atol=stat_tol)
    torch.testing.assert_close(row_sum.double(), sum64, rtol=1e-5, atol=stat_tol)


@settings(max_examples=6, deadline=None)
@given(
    n=st.integers(1, 40),
    d=st.sampled_from([16, 32]),
    keep=st.sampled_from(["hard", "soft", "zeros", "ones"]),
    eps=st.sampled_from([0.0, 1e-6, 0.1]),
    seed=st.integers(0, 2**16),
)
def test_random_shapes_match_oracle(n, d, keep, eps, seed):
    case = Case(1, 2, n, d, keep=keep, eps=eps)
    q, k, v, keep_t, grad_out = make_inputs(case, DEVICE, seed=seed)
    got, _, _ = run_kernels(q, k, v, keep_t, grad_out, None, eps)
    expected, _, _ = oracle(q, k, v, keep_t, grad_out, None, eps)
    assert_within_rule(got, expected, same_dtype_eager(q, k, v, keep_t, grad_out, None, eps), case.dtype)


@pytest.mark.parametrize(
    "blocks",
    [
        {"fwd": (16, 32), "dkdv": (32, 16), "dq": (16, 32)},
        {"fwd": (32, 32), "dkdv": (16, 16), "dq": (32, 32)},
        {stage: triton.Config({"BLOCK_M": 16, "BLOCK_N": 64}, num_warps=4, num_stages=2) for stage in ("fwd", "dkdv", "dq")},
    ],
    ids=["m16_n32", "square", "config_m16_n64"],
)
def test_tile_shapes_agree(blocks):
    """Every tiling, tails and diagonal ranges included, computes the same function."""
    case = Case(2, 2, 70, 16, keep="soft")
    q, k, v, keep, grad_out = make_inputs(case, DEVICE, seed=1)
    got, _, _ = run_kernels(q, k, v, keep, grad_out, None, case.eps, blocks=blocks)
    expected, _, _ = oracle(q, k, v, keep, grad_out, None, case.eps)
    baseline = same_dtype_eager(q, k, v, keep, grad_out, None, case.eps)
    assert_within_rule(got, expected, baseline, case.dtype)


def test_backward_is_deterministic():
    case = Case(1, 3, 40, 16, dtype=torch.float16)
    q, k, v, keep, grad_out = make_inputs(case, DEVICE, seed=2)
    out, row_max, row_sum = triton_ma.masked_attention_forward(q, k, v, keep, blocks=BLOCKS)
    first = triton_ma.masked_attention_backward(grad_out, q, k, v, keep, out, row_max, row_sum, None, 1e-6, blocks=BLOCKS)
    second = triton_ma.masked_attention_backward(grad_out, q, k, v, keep, out, row_max, row_sum, None, 1e-6, blocks=BLOCKS)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("needs", [(True, False, False, False), (False, True, False, True), (False, False, True, False)])
def test_backward_computes_only_requested_gradients(needs):
    """Gradients not asked for come back as None; the others equal those of a full backward."""
    case = Case(1, 2, 37, 16, keep="soft")
    q, k, v, keep, grad_out = make_inputs(case, DEVICE, seed=10)
    out, row_max, row_sum = triton_ma.masked_attention_forward(q, k, v, keep, blocks=BLOCKS)
    args = (grad_out, q, k, v, keep, out, row_max, row_sum, None, 1e-6)
    full = triton_ma.masked_attention_backward(*args, blocks=BLOCKS)
    some = triton_ma.masked_attention_backward(*args, needs=needs, blocks=BLOCKS)
    for name, need, a, b in zip(OUTPUTS[1:], needs, full, some):
        assert (b is not None) == need, name
        if need:
            assert torch.equal(a, b), name
    assert triton_ma.masked_attention_backward(*args, needs=(False,) * 4) == (None,) * 4


def test_dkeep_trains_dropped_keys():
    """dkeep is nonzero for dropped keys: the straight-through estimator depends on it."""
    case = Case(1, 2, 40, 16)
    q, k, v, keep, grad_out = make_inputs(case, DEVICE, seed=3)
    got, _, _ = run_kernels(q, k, v, keep, grad_out, None, case.eps)
    dropped = keep == 0
    assert dropped.any() and (got["dkeep"][dropped].abs() > 1e-6).all()


def test_float64_runs_the_reference_with_float64_stats():
    case = Case(1, 2, 20, 16, dtype=torch.float64, keep="soft")
    q, k, v, keep, grad_out = make_inputs(case, DEVICE, seed=4)
    keep = keep.double()
    got, row_max, row_sum = run_kernels(q, k, v, keep, grad_out, None, case.eps)
    expected, max64, sum64 = oracle(q, k, v, keep, grad_out, None, case.eps)
    assert row_max.dtype == row_sum.dtype == torch.float64
    torch.testing.assert_close(row_max, max64)
    torch.testing.assert_close(row_sum, sum64)
    for name in OUTPUTS:
        torch.testing.assert_close(got[name], expected[name])


def test_launchers_reject_bad_inputs():
    q = torch.randn(1, 2, 8, 16, device=DEVICE)
    keep = torch.ones(1, 8, device=DEVICE)
    with pytest.raises(ValueError, match="head dim"):
        big = torch.randn(1, 2, 8, 256, device=DEVICE)
        triton_ma.masked_attention_forward(big, big, big, keep)
    with pytest.raises(ValueError, match="keep"):
        triton_ma.masked_attention_forward(q, q, q, torch.ones(1, 9, device=DEVICE))
    with pytest.raises(TypeError, match="share one dtype"):
        triton_ma.masked_attention_forward(q, q.half(), q, keep)
    with pytest.raises(ValueError, match="eps"):
        triton_ma.masked_attention_forward(q, q, q, keep, None, -1.0)
    with pytest.raises(ValueError, match="row_sum"):
        out, row_max, _ = triton_ma.masked_attention_forward(q, q, q, keep)
        triton_ma.masked_attention_backward(q, q, q, q, keep, out, row_max, row_max[:, :1], None, 1e-6)


# The interpreter runs the kernels as Python: it accepts what the compiler rejects (non-constexpr
# globals, math on the wrong dtype). Without a GPU, the compiler's front end still runs: the kernels
# are lowered to Triton IR for every dtype and tile flavour, in a process without TRITON_INTERPRET.
_FRONTEND_SCRIPT = """
import itertools
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton._C.libtriton import ir
from stpriv_ops.triton import masked_attention_bwd as bwd, masked_attention_fwd as fwd

target = GPUTarget("cuda", 90, 32)
backend = make_backend(target)
options = backend.parse_options({"num_warps": 8, "num_stages": 3})
INPUTS = ("Q_ptr", "K_ptr", "V_ptr", "Out_ptr", "DO_ptr", "DQ_ptr", "DK_ptr", "DV_ptr")
KERNELS = [
    (fwd.masked_attention_fwd_kernel, dict(BLOCK_M=128, BLOCK_N=64, SCALE_NEGATIVE=False)),
    (bwd.masked_attention_bwd_dq_kernel, dict(BLOCK_M=128, BLOCK_N=32, NEED_DQ=True)),
    (bwd.masked_attention_bwd_dkdv_kernel, dict(BLOCK_M=32, BLOCK_N=64, NEED_DK=True, NEED_DV=True, NEED_DKEEP=True)),
]
# head dims: 16 and 128 (powers of two, no column mask) and 24 (a 32-wide tile, masked columns)
for (fn, consts), dtype, head_dim, has_eps in itertools.product(KERNELS, ("bf16", "fp16", "fp32"), (16, 24, 128), (True, False)):
    consts = dict(consts, HEAD_DIM=head_dim, BLOCK_D=max(16, triton.next_power_of_2(head_dim)))
    consts["DOT_PRECISION"] = "tf32x3" if dtype == "fp32" else "tf32"
    if "HAS_EPS" in fn.arg_names:
        consts["HAS_EPS"] = has_eps
    signature = {}
    for name in fn.arg_names:
        if name in consts:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = "*" + dtype if name in INPUTS else "*fp32"
        elif name.startswith("stride_") or name in ("H", "N"):
            signature[name] = "i32"
        else:
            signature[name] = "fp32"
    context = ir.context()
    ir.load_dialects(context)
    backend.load_dialects(context)
    ASTSource(fn, signature, constexprs=consts).make_ir(
        target, options, backend.get_codegen_implementation(options), backend.get_module_map(), context
    )
print("frontend ok")
"""


def test_kernels_pass_the_compiler_frontend():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", _FRONTEND_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "frontend ok" in result.stdout, result.stderr[-3000:]


# ---- CUDA only: through torch.ops.stpriv, autotuned, with autograd -------------------------------
def _require_ops():
    if not stpriv_ops.has_ops():
        pytest.skip("stpriv_ops._C is not built: torch.ops.stpriv is unavailable")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(2, 6, 392, 64), (2, 3, 130, 128), (3, 2, 37, 16)], ids=str)
def test_cuda_op_autograd_matches_oracle(dtype, shape):
    _require_ops()
    case = Case(*shape, dtype=dtype, keep="hard")
    q, k, v, keep, grad_out = make_inputs(case, "cuda", seed=5)
    leaves = [t.detach().requires_grad_() for t in (q, k, v, keep)]
    out = stpriv_ops.masked_attention(*leaves)
    grads = torch.autograd.grad(out, leaves, grad_out)
    got = dict(zip(OUTPUTS, (out.detach(), *grads)))
    expected, _, _ = oracle(q, k, v, keep, grad_out, None, 1e-6)
    baseline = same_dtype_eager(q, k, v, keep, grad_out, None, 1e-6)
    assert_within_rule(got, expected, baseline, dtype)


@pytest.mark.cuda
@pytest.mark.parametrize(
    "shape, dtype",
    [((2, 6, 392, 64), torch.bfloat16), ((2, 3, 130, 128), torch.bfloat16), ((2, 6, 392, 64), torch.float32)],
    ids=str,
)
def test_cuda_every_tuning_config_matches_oracle(shape, dtype):
    """Each tile candidate is correct (and, compiled here, cached for the benchmarks)."""
    case = Case(*shape, dtype=dtype)
    q, k, v, keep, grad_out = make_inputs(case, "cuda", seed=9)
    expected, _, _ = oracle(q, k, v, keep, grad_out, None, case.eps)
    baseline = same_dtype_eager(q, k, v, keep, grad_out, None, case.eps)
    candidates = {
        stage: tuning.candidate_configs(stage, case.d, case.N, case.dtype) for stage in ("fwd", "dkdv", "dq")
    }
    for i in range(max(len(c) for c in candidates.values())):
        blocks = {stage: configs[i % len(configs)] for stage, configs in candidates.items()}
        got, _, _ = run_kernels(q, k, v, keep, grad_out, None, case.eps, blocks=blocks)
        assert_within_rule(got, expected, baseline, case.dtype)


@pytest.mark.cuda
def test_cuda_tf32_follows_torch_matmul_precision():
    _require_ops()
    case = Case(2, 6, 392, 64)
    q, k, v, keep, grad_out = make_inputs(case, "cuda", seed=6)
    expected, _, _ = oracle(q, k, v, keep, grad_out, None, 1e-6)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        out = stpriv_ops.masked_attention(q, k, v, keep)
    finally:
        torch.set_float32_matmul_precision(previous)
    # TF32 keeps 10 mantissa bits: errors of a few 1e-3 of the largest output.
    assert max_error(out, expected["out"]) <= 5e-3 * expected["out"].abs().max().item()


@pytest.mark.cuda
def test_cuda_backward_is_bitwise_deterministic():
    _require_ops()
    case = Case(8, 6, 392, 64, dtype=torch.bfloat16)
    q, k, v, keep, grad_out = make_inputs(case, "cuda", seed=7)
    runs = []
    for _ in range(2):
        leaves = [t.detach().requires_grad_() for t in (q, k, v, keep)]
        out = stpriv_ops.masked_attention(*leaves)
        runs.append(torch.autograd.grad(out, leaves, grad_out))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.cuda
def test_cuda_compiles_fullgraph():
    _require_ops()
    case = Case(2, 6, 97, 64, dtype=torch.bfloat16)
    q, k, v, keep, grad_out = make_inputs(case, "cuda", seed=8)

    def step(q, k, v, keep):
        return stpriv_ops.masked_attention(q, k, v, keep).float().square().sum()

    leaves = [t.detach().requires_grad_() for t in (q, k, v, keep)]
    loss = torch.compile(step, fullgraph=True)(*leaves)
    grads = torch.autograd.grad(loss, leaves)
    leaves_eager = [t.detach().requires_grad_() for t in (q, k, v, keep)]
    grads_eager = torch.autograd.grad(step(*leaves_eager), leaves_eager)
    for a, b in zip(grads, grads_eager):
        torch.testing.assert_close(a, b)
