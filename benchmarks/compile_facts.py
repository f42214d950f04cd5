"""Compiles every Triton kernel of stpriv_ops for sm_90 (H100/H200) without a GPU and prints a table.

    python benchmarks/compile_facts.py

Each kernel is compiled at the configuration its launcher runs for the paper's shapes (attention:
B32 H6 N392 d64 and B8 H6 N1568 d64, plus head dim 128; masked_mean B32 L8 N49 C128; gumbel_keep
B32 T392; top-k, gather and scatter at 34% of 392 tokens per step, D 384) and each row gives
registers per thread, local memory per thread (where spilled registers go: 0 = no spills) and
shared memory. A kernel fails the check if it uses local memory or asks for more than the 227 KiB
of shared memory an sm_90 block may use; the script exits non-zero then. Registers and local
memory come from cuobjdump (shipped with Triton) on the compiled cubin; no driver is needed. Compiles run on the CPU: about a minute in all.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)  # the real compiler, not the interpreter

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from stpriv_ops.triton import gumbel, masked_mean, topk  # noqa: E402
from stpriv_ops.triton.masked_attention_bwd import (  # noqa: E402
    masked_attention_bwd_dkdv_kernel,
    masked_attention_bwd_dq_kernel,
)
from stpriv_ops.triton.masked_attention_fwd import masked_attention_fwd_kernel  # noqa: E402
from stpriv_ops.triton.masked_attention_tuning import pinned_config  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
SHARED_LIMIT = 227 * 1024
NVIDIA_BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
INT_ARGS = {"H", "N", "L", "C", "D", "k", "rows", "count"}
TRITON_DTYPE = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def signature(fn, consts: dict, pointers: dict[str, str], default_pointer: str) -> dict[str, str]:
    """Triton signature of ``fn``: constexprs, pointer dtypes, i32 sizes and strides, i64 seeds, fp32 floats."""
    sig = {}
    for name in fn.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = "*" + pointers.get(name, default_pointer)
        elif name.startswith("stride_") or name in INT_ARGS:
            sig[name] = "i32"
        elif name == "seed":
            sig[name] = "i64"
        else:
            sig[name] = "fp32"
    return sig


def attention_rows():
    """(label, kernel, constexprs, pointer dtypes, default pointer dtype, config) per attention kernel."""
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        tt = TRITON_DTYPE[dtype]
        precision = "tf32x3" if dtype == torch.float32 else "tf32"
        tensors = {name: tt for name in ("Q_ptr", "K_ptr", "V_ptr", "Out_ptr", "DO_ptr", "DQ_ptr", "DK_ptr", "DV_ptr")}
        for n, d in ((392, 64), (1568, 64), (392, 128)):
            common = dict(HEAD_DIM=d, BLOCK_D=d, DOT_PRECISION=precision)
            stages = (
                ("fwd", masked_attention_fwd_kernel, dict(HAS_EPS=True, SCALE_NEGATIVE=False)),
                ("dq", masked_attention_bwd_dq_kernel, dict(NEED_DQ=True)),
                ("dkdv", masked_attention_bwd_dkdv_kernel,
                 dict(HAS_EPS=True, NEED_DK=True, NEED_DV=True, NEED_DKEEP=True)),
            )
            for stage, fn, flags in stages:
                config = pinned_config(stage, d, n, dtype)
                consts = dict(common, **flags, **config.kwargs)
                label = f"attention {stage}, {tt}, N{n} d{d}"
                yield label, fn, consts, tensors, "fp32", config


def token_op_rows():
    """The token-pruning kernels at the paper's shapes, with the tiles their launchers pick."""
    def cfg(num_warps=4):
        return triton.Config({}, num_warps=num_warps, num_stages=3)

    block_n, block_c = masked_mean._blocks(49, 128)
    yield ("masked_mean fwd, fp32, L8 N49 C128", masked_mean._masked_mean_fwd_kernel,
           dict(BLOCK_N=block_n, BLOCK_C=block_c), {}, "fp32", cfg())
    yield ("masked_mean bwd, fp32, L8 N49 C128", masked_mean._masked_mean_bwd_kernel,
           dict(BLOCK_N=block_n, BLOCK_C=block_c, BLOCK_LN=triton.next_power_of_2(8 * 49)), {}, "fp32", cfg())
    yield ("gumbel_keep fwd, T392", gumbel._gumbel_keep_fwd_kernel,
           dict(HAS_NOISE=False, BLOCK=gumbel._BLOCK), {}, "fp32", cfg())
    yield ("gumbel_keep bwd, T392", gumbel._gumbel_keep_bwd_kernel, dict(BLOCK=gumbel._BLOCK), {}, "fp32", cfg())
    block_n = triton.next_power_of_2(49)
    block_j = min(block_n, max(16, 8192 // block_n))
    yield ("gumbel_topk fwd, N49", gumbel._gumbel_topk_fwd_kernel,
           dict(HAS_NOISE=False, BLOCK_N=block_n, BLOCK_J=block_j), {}, "fp32", cfg())
    yield ("gumbel_topk bwd, N49", gumbel._gumbel_topk_bwd_kernel, dict(BLOCK_N=block_n), {}, "fp32", cfg())
    yield ("topk_keep, N49 k16", topk._topk_keep_kernel, dict(BLOCK_N=block_n, BLOCK_J=block_j),
           {"Idx_ptr": "i64"}, "fp32", cfg())
    block_d = min(256, triton.next_power_of_2(384))
    yield ("gather_tokens, bf16, D384", topk._gather_tokens_kernel,
           dict(BLOCK_R=max(1, 4096 // block_d), BLOCK_D=block_d), {"Idx_ptr": "i64"}, "bf16", cfg())
    yield ("scatter_tokens, bf16, N49 k16 D384", topk._scatter_tokens_kernel,
           dict(BLOCK_N=64, BLOCK_K=16, BLOCK_D=64, DOT_PRECISION="tf32"), {"Idx_ptr": "i64"}, "bf16", cfg())


def resource_usage(cubin: bytes) -> dict[str, int]:
    """REG, STACK, SHARED and LOCAL of the (one) kernel in a cubin, from cuobjdump."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([os.path.join(NVIDIA_BIN, "cuobjdump"), "--dump-resource-usage", f.name],
                              capture_output=True, text=True, check=True).stdout
    return {key: int(value) for key, value in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", text)}


def main() -> int:
    print(f"triton {triton.__version__}, target sm_{TARGET.arch}")
    header = "| kernel | BLOCK_M x BLOCK_N | warps, stages | registers | local memory (spills), bytes | shared memory | ok |"
    print(header)
    print("| --- | --- | --- | --- | --- | --- | --- |")
    failures = 0
    for label, fn, consts, pointers, default_pointer, config in (*attention_rows(), *token_op_rows()):
        sig = signature(fn, consts, pointers, default_pointer)
        src = ASTSource(fn, sig, constexprs=consts)
        kernel = triton.compile(src, target=TARGET,
                                options={"num_warps": config.num_warps, "num_stages": config.num_stages})
        usage = resource_usage(kernel.asm["cubin"])
        local = usage.get("LOCAL", 0) + usage.get("STACK", 0)  # spilled registers live in local memory
        shared = kernel.metadata.shared
        ok = local == 0 and shared <= SHARED_LIMIT
        failures += not ok
        tiles = f"{consts['BLOCK_M']} x {consts['BLOCK_N']}" if "BLOCK_M" in consts else "-"
        print(f"| {label} | {tiles} | {config.num_warps}, {config.num_stages} | {usage.get('REG', '?')} "
              f"| {local} | {shared / 1024:.1f} KiB | {'yes' if ok else 'NO'} |", flush=True)
    print(f"{failures} kernel(s) fail the check (spills, or shared memory > {SHARED_LIMIT // 1024} KiB)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
