"""Compile every Triton kernel variant for a Hopper GPU (sm_90) without a GPU.

Run as a script (never under TRITON_INTERPRET): the interpreter accepts code the GPU compiler
rejects, so this is what catches such code on a machine with no GPU.  Prints one line per
variant and exits non-zero on the first failure.
"""
import itertools
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from fastvae.ops import _backend  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
INTS = ("B", "D", "split_cols", "n_split", "grad_div")


def signature(fn, pointer_types, constexprs):
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = pointer_types.get(name, pointer_types["*"])
        elif name in ("ls_value", "beta_value", "cap_value", "floor"):
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def build(fn, pointer_types, constexprs, num_warps=8):
    src = ASTSource(fn, signature(fn, pointer_types, constexprs), constexprs)
    triton.compile(src, target=TARGET, options={"num_warps": num_warps})
    print("ok", fn.__name__, {k: v for k, v in constexprs.items() if not k.startswith("BLOCK")}, flush=True)


def main():
    latent = _backend.kernels("latent")
    lik = _backend.kernels("likelihoods")
    for dtype, (has_eps, write_z, kl) in itertools.product(
        ("fp32", "bf16", "fp64"), [(False, True, True), (True, True, True), (False, False, True), (False, True, False)]
    ):
        fp64 = dtype == "fp64"
        ptrs = {"*": f"*{dtype}", "seed_ptr": "*i64", "kl_ptr": "*fp64" if fp64 else "*fp32"}
        build(latent.latent_forward_kernel, ptrs, dict(HAS_EPS=has_eps, WRITE_Z=write_z, COMPUTE_KL=kl, FP64=fp64,
                                                       BLOCK_R=4, BLOCK_D=1024))
        ptrs["gkl_ptr"] = "*fp32"
        build(latent.latent_backward_kernel, ptrs, dict(HAS_EPS=has_eps, HAS_GZ=write_z, HAS_GKL=kl, FP64=fp64,
                                                        BLOCK_R=4, BLOCK_D=1024))
    for dtype, kind, mode in itertools.product(("fp32", "bf16"), range(4), (0, 1, 2)):
        if kind in (0, 2) and mode:
            continue
        ptrs = {"*": f"*{dtype}", "loss_ptr": "*fp32", "ls_ptr": "*fp32", "gls_ptr": "*fp32", "g_ptr": "*fp32",
                "coef_ptr": "*fp32", "grate_ptr": "*fp32", "s_sum_ptr": "*fp32", "gs_ptr": "*fp32"}
        for grad, even in ((False, True), (True, False), (True, True)):
            build(lik.nll_forward_kernel, ptrs, dict(KIND=kind, LS_MODE=mode, GRAD_X=grad,
                                                     GRAD_LS=grad and kind in (1, 3), FP64=False, EVEN=even,
                                                     BLOCK_R=1, BLOCK_D=4096), num_warps=4)
        for recompute, g_scalar in itertools.product((False, True), (False, True)):
            build(lik.nll_backward_kernel, ptrs, dict(KIND=kind, LS_MODE=mode, GRAD_X=True,
                                                      GRAD_LS=kind in (1, 3) and mode == 2, RECOMPUTE=recompute,
                                                      HAS_RATE=True, SCALAR_GS=g_scalar and mode == 1,
                                                      G_SCALAR=g_scalar, FP64=False, BLOCK_R=1, BLOCK_D=4096))
    build(lik.nll_forward_kernel, {"*": "*fp64"}, dict(KIND=1, LS_MODE=1, GRAD_X=True, GRAD_LS=True, FP64=True,
                                                       EVEN=False, BLOCK_R=16, BLOCK_D=256))
    build(lik.nll_forward_kernel, {"*": "*fp64"}, dict(KIND=0, LS_MODE=0, GRAD_X=True, GRAD_LS=False, FP64=True,
                                                       EVEN=True, BLOCK_R=16, BLOCK_D=256))
    objective = _backend.kernels("objective")
    for fp64, reduction, has_rate, cap in itertools.product((False, True), (0, 1, 2), (False, True), (0, 1, 2)):
        if cap and not has_rate:
            continue
        ptrs = {"*": "*fp64" if fp64 else "*fp32"}
        build(objective.finish_kernel, ptrs, dict(REDUCTION=reduction, HAS_RATE=has_rate, BETA_PTR=cap == 2,
                                                  HAS_CAP=cap > 0, CAP_PTR=cap == 2, HAS_S=not has_rate, FP64=fp64,
                                                  BLOCK=1024), num_warps=4)
    tc = _backend.kernels("tc")
    for fp64, mss in itertools.product((False, True), (False, True)):
        ptrs = {"*": "*fp64" if fp64 else "*fp32"}
        meta = dict(MSS=mss, FP64=fp64, BLOCK_I=16, BLOCK_J=8, BLOCK_K=32)
        for fn in (tc.tc_forward_kernel, tc.tc_backward_z_kernel, tc.tc_backward_params_kernel):
            build(fn, ptrs, meta, num_warps=4)
    fb = _backend.kernels("free_bits")
    for dtype in ("fp32", "bf16", "fp64"):
        ptrs = {"*": f"*{dtype}", "out_ptr": "*fp64" if dtype == "fp64" else "*fp32",
                "means_ptr": "*fp64" if dtype == "fp64" else "*fp32", "g_ptr": "*fp32"}
        meta = dict(FP64=dtype == "fp64", BLOCK_R=64, BLOCK_C=32)
        for fn in (fb.kl_column_means_kernel, fb.free_bits_rows_kernel, fb.free_bits_backward_kernel):
            build(fn, ptrs, meta, num_warps=4)
    iwae = _backend.kernels("iwae")
    for dtype in ("fp32", "bf16", "fp64"):
        ptrs = {"*": f"*{dtype}", "seed_ptr": "*i64", "lr_ptr": "*fp64" if dtype == "fp64" else "*fp32",
                "glr_ptr": "*fp32"}
        build(iwae.log_weights_forward_kernel, ptrs, dict(FP64=dtype == "fp64", BLOCK_R=4, BLOCK_D=512), num_warps=4)
        for gz, glr in ((True, True), (True, False), (False, True)):
            build(iwae.log_weights_backward_kernel, ptrs, dict(HAS_GZ=gz, HAS_GLR=glr, FP64=dtype == "fp64",
                                                               BLOCK_R=4, BLOCK_D=512), num_warps=4)
    for dtype in ("fp32", "bf16"):
        ptrs = {"*": f"*{dtype}", "loss_ptr": "*fp32", "ls_ptr": "*fp32", "gls_ptr": "*fp32", "g_ptr": "*fp32",
                "coef_ptr": "*fp32", "grate_ptr": "*fp32", "s_sum_ptr": "*fp32", "gs_ptr": "*fp32"}
        build(lik.nll_forward_kernel, ptrs, dict(KIND=0, LS_MODE=0, GRAD_X=True, GRAD_LS=False, FP64=False,
                                                 EVEN=False, BLOCK_R=1, BLOCK_D=4096, T_MOD=True), num_warps=4)
        build(lik.nll_backward_kernel, ptrs, dict(KIND=0, LS_MODE=0, GRAD_X=True, GRAD_LS=False, RECOMPUTE=True,
                                                  HAS_RATE=False, SCALAR_GS=False, G_SCALAR=False, FP64=False,
                                                  BLOCK_R=1, BLOCK_D=4096, T_MOD=True), num_warps=4)
    return 0


if __name__ == "__main__":
    sys.exit(main())
