"""Compiles every Triton kernel of stpriv_ops for sm_90 (H100/H200) without a GPU and prints a table.

    python benchmarks/compile_facts.py [--only SUBSTRING] [--dump DIR]

``--only`` compiles the rows whose label contains SUBSTRING; ``--dump`` writes each compiled
kernel's TTGIR and PTX to DIR (to see what keeps registers live).

Each kernel is compiled at the configuration its launcher runs for the paper's shapes (attention:
B32 H6 N392 d64 and B8 H6 N1568 d64, plus head dim 128; masked_mean B32 L8 N49 C128; gumbel_keep
B32 T392; top-k, gather and scatter at 34% of 392 tokens per step, D 384) and each row gives
registers per thread (compiled with the specialization a launch on contiguous tensors gets, see
``specialization``), local memory per thread (where spilled registers go: 0 = no spills) and
shared memory. A kernel fails the check if it uses local memory or asks for more than the 227 KiB
of shared memory an sm_90 block may use; the script exits non-zero then. Registers and local
memory come from cuobjdump (shipped with Triton) on the compiled cubin; no driver is needed. Compiles run on the CPU: about a minute in all.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)  # the real compiler, not the interpreter

import torch  # noqa: E402
import triton  # noqa: E402
from triton._C.libtriton import native_specialize_impl  # noqa: E402
from triton.backends.compiler import BaseBackend, GPUTarget  # noqa: E402
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


def specialization(fn, consts: dict, pointers: dict[str, str], default_pointer: str, values: dict[str, int]):
    """Signature, constexprs and attributes of ``fn`` as a launch with these argument values gets them.

    Triton's JIT specializes every launch on its integer arguments: a value of 1 becomes a
    constexpr, a multiple of 16 carries ``tt.divisibility = 16``; so does every tensor whose data
    pointer is 16-byte aligned (all of PyTorch's fresh CUDA allocations). A stride of 1 and
    divisible row strides are what let the compiler vectorize a tile's loads (and pipeline them
    through shared memory), so compiling without them would count registers for code that never
    runs. ``values`` holds the integer arguments of the paper's shapes (contiguous tensors); the
    rule applied to them is Triton's own (``native_specialize_impl``). Floats are fp32, seeds i64.
    """
    sig, consts, attrs = {}, dict(consts), {}
    for index, name in enumerate(fn.arg_names):
        if name in consts:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = "*" + pointers.get(name, default_pointer)
            attrs[(index,)] = [["tt.divisibility", 16]]
        elif name in values:
            kind, spec = native_specialize_impl(BaseBackend, values[name], False, True, True)
            sig[name] = kind
            if kind == "constexpr":
                consts[name] = spec
            elif spec == "D":
                attrs[(index,)] = [["tt.divisibility", 16]]
        elif name.startswith("stride_") or name in INT_ARGS:
            sig[name] = "i32"
        elif name == "seed":
            sig[name] = "i64"
        else:
            sig[name] = "fp32"
    return sig, consts, attrs


def attention_values(B: int, H: int, N: int, d: int) -> dict[str, int]:
    """Integer arguments of the attention launchers for contiguous ``[B, H, N, d]`` tensors, keep ``[B, N]``."""
    values = {"H": H, "N": N}
    for t in ("q", "k", "v", "o", "do", "dq", "dk", "dv"):
        values.update({f"stride_{t}b": H * N * d, f"stride_{t}h": N * d, f"stride_{t}n": d, f"stride_{t}d": 1})
    for t in ("keep", "dkeep"):
        values.update({f"stride_{t}b": N, f"stride_{t}n": 1})
    return values


def attention_rows():
    """(label, kernel, constexprs, pointer dtypes, default pointer dtype, integer values, config) per attention kernel."""
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        tt = TRITON_DTYPE[dtype]
        precision = "tf32x3" if dtype == torch.float32 else "tf32"
        tensors = {name: tt for name in ("Q_ptr", "K_ptr", "V_ptr", "Out_ptr", "DO_ptr", "DQ_ptr", "DK_ptr", "DV_ptr")}
        for b, n, d in ((32, 392, 64), (8, 1568, 64), (32, 392, 128)):
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
                yield label, fn, consts, tensors, "fp32", attention_values(b, 6, n, d), config


def token_op_rows():
    """The token-pruning kernels at the paper's shapes (B32, L8 steps of N49 tubelets, 16 kept per
    step, D384), with the tiles their launchers pick."""
    def cfg(num_warps=4):
        return triton.Config({}, num_warps=num_warps, num_stages=3)

    mean = dict(L=8, N=49, C=128)
    block_n, block_c = masked_mean._blocks(49, 128)
    yield ("masked_mean fwd, fp32, L8 N49 C128", masked_mean._masked_mean_fwd_kernel,
           dict(BLOCK_N=block_n, BLOCK_C=block_c), {}, "fp32", mean, cfg())
    yield ("masked_mean bwd, fp32, L8 N49 C128", masked_mean._masked_mean_bwd_kernel,
           dict(BLOCK_N=block_n, BLOCK_C=block_c, BLOCK_LN=triton.next_power_of_2(8 * 49)), {}, "fp32", mean, cfg())
    tokens = dict(count=32 * 392)
    yield ("gumbel_keep fwd, T392", gumbel._gumbel_keep_fwd_kernel,
           dict(HAS_NOISE=False, BLOCK=gumbel._BLOCK), {}, "fp32", tokens, cfg())
    yield ("gumbel_keep bwd, T392", gumbel._gumbel_keep_bwd_kernel, dict(BLOCK=gumbel._BLOCK), {}, "fp32",
           tokens, cfg())
    step = dict(L=8, N=49, k=16, D=384, rows=32 * 8 * 16)
    block_n = triton.next_power_of_2(49)
    block_j = min(block_n, max(16, 8192 // block_n))
    yield ("gumbel_topk fwd, N49", gumbel._gumbel_topk_fwd_kernel,
           dict(HAS_NOISE=False, BLOCK_N=block_n, BLOCK_J=block_j), {}, "fp32", step, cfg())
    yield ("gumbel_topk bwd, N49", gumbel._gumbel_topk_bwd_kernel, dict(BLOCK_N=block_n), {}, "fp32", step, cfg())
    yield ("topk_keep, N49 k16", topk._topk_keep_kernel, dict(BLOCK_N=block_n, BLOCK_J=block_j),
           {"Idx_ptr": "i64"}, "fp32", step, cfg())
    block_d = min(256, triton.next_power_of_2(384))
    yield ("gather_tokens, bf16, D384", topk._gather_tokens_kernel,
           dict(BLOCK_R=max(1, 4096 // block_d), BLOCK_D=block_d), {"Idx_ptr": "i64"}, "bf16", step, cfg())
    yield ("scatter_tokens, bf16, N49 k16 D384", topk._scatter_tokens_kernel,
           dict(BLOCK_N=64, BLOCK_K=16, BLOCK_D=64, DOT_PRECISION="tf32"), {"Idx_ptr": "i64"}, "bf16", step, cfg())


def resource_usage(cubin: bytes) -> dict[str, int]:
    """REG, STACK, SHARED and LOCAL of the (one) kernel in a cubin, from cuobjdump."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([os.path.join(NVIDIA_BIN, "cuobjdump"), "--dump-resource-usage", f.name],
                              capture_output=True, text=True, check=True).stdout
    return {key: int(value) for key, value in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", text)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="compile only the rows whose label contains this")
    parser.add_argument("--dump", default=None, help="directory for each kernel's TTGIR and PTX")
    args = parser.parse_args()
    print(f"triton {triton.__version__}, target sm_{TARGET.arch}")
    header = "| kernel | BLOCK_M x BLOCK_N | warps, stages | registers | local memory (spills), bytes | shared memory | ok |"
    print(header)
    print("| --- | --- | --- | --- | --- | --- | --- |")
    failures = 0
    for label, fn, consts, pointers, default_pointer, values, config in (*attention_rows(), *token_op_rows()):
        if args.only not in label:
            continue
        sig, constexprs, attrs = specialization(fn, consts, pointers, default_pointer, values)
        src = ASTSource(fn, sig, constexprs=constexprs, attrs=attrs)
        kernel = triton.compile(src, target=TARGET,
                                options={"num_warps": config.num_warps, "num_stages": config.num_stages})
        usage = resource_usage(kernel.asm["cubin"])
        if args.dump:
            os.makedirs(args.dump, exist_ok=True)
            stem = os.path.join(args.dump, re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_"))
            for ext in ("ttgir", "ptx"):
                with open(f"{stem}.{ext}", "w") as f:
                    f.write(kernel.asm[ext])
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
