"""Static report of fastvae's Triton kernels on sm_90 (H100 / H200), read from the machine code, no GPU needed.

    python bench/static_sm90.py                  # every variant: bench/results/static-sm90.json + bench/README.md table
    python bench/static_sm90.py --only nll_forward --no-readme

Method
------
1. **Capture.** The real launchers run on CPU tensors of the benchmark's shapes, with the tiling forced to what
   they pick on CUDA for a 132-SM GPU (the CUDA branch of ``fastvae.ops._backend._tiling``), and every launch
   (``JITFunction.run``) is recorded instead of run.
2. **Specialize as the JIT does.** Each recorded launch goes through Triton's own argument binder
   (``create_function_from_signature`` / ``_pack_args``), so pointers and integers divisible by 16 get
   ``tt.divisibility=16`` and integers equal to 1 become constexprs: the variant compiled is the one a launch on
   the GPU compiles.
3. **Compile** for ``GPUTarget("cuda", 90, 32)`` (sm_90a) with Triton's bundled ptxas; read registers, stack,
   local (spill) and shared memory with ``cuobjdump -res-usage`` and the SASS with ``cuobjdump -sass``.
4. **Count the executed path.** The SASS is cut into loops at its backward branches; every instruction issues once
   per pass through the code it sits in (predicated-off instructions still issue), weighted by the trip counts
   of the loops around it, which follow from the launch's arguments (the column loop runs ``split_cols /
   BLOCK_D`` times, the persistent tile loop ``tiles / programs`` times, the batch loop of the reduction
   ``B / BLOCK`` times).  What is left out, and why: instructions after the kernel's last ``EXIT`` (ptxas puts
   out-of-line slow paths there, such as libdevice's large-argument reductions, and a trailing self-branch),
   since the kernels never take them; for the backward kernel's grad_output == 1 case, the loops (a uniform
   branch on the value skips them).  Bytes per element are read off the same code: the widths of the global
   loads and stores in the loop body, times the threads, over the elements of one iteration.
5. **Predict** with the machine model below: time = max(bytes / copy bandwidth (stretched when too few bytes are
   in flight per SM to cover the memory latency), thread-instructions / issue rate), divided by the last wave's
   fill; the predicted fraction of copy bandwidth is bytes / copy bandwidth over that time.

The model is only worth what a GPU run later shows: ``fastvae bench`` on a GPU puts the measured fraction of
copy bandwidth next to these predictions in bench/README.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SCHEMA = "fastvae-static-sm90/1"
SMS = 132
#: The machine model: 4 schedulers x 1 warp-instruction per clock per SM = 128 thread-instructions per clock.
MACHINES = {
    "H100": {"sms": SMS, "clock_ghz": 1.755, "copy_tbps": 3.0},
    "H200": {"sms": SMS, "clock_ghz": 1.755, "copy_tbps": 4.3},
}
MODEL = {
    "thread_instructions_per_clock_per_sm": 128,
    "issue_efficiency": 0.7,          # sustained share of the peak issue rate of a streaming kernel
    "memory_latency_ns": 600,         # HBM latency that the bytes in flight per SM must cover (Little's law)
    "registers_per_sm": 65536,
    "register_granularity": 8,        # registers per thread are allocated in multiples of 8
    "max_threads_per_sm": 2048,
    "max_ctas_per_sm": 32,
    "shared_bytes_per_sm": 228 * 1024,
}


# ----------------------------------------------------------------------------------------------- capture


@dataclasses.dataclass
class Launch:
    kernel: object
    args: tuple
    kwargs: dict
    grid: tuple

    @property
    def name(self) -> str:
        return self.kernel.__name__


def capture(call: Callable[[], object]) -> list[Launch]:
    """The Triton launches ``call()`` makes on CPU tensors, with the launchers' CUDA tiling for SMS SMs."""
    from triton.runtime import jit as tjit

    import fastvae
    from fastvae.ops import _backend

    launches: list[Launch] = []

    def record(self, *args, grid, warmup, **kwargs):
        launches.append(Launch(self, args, dict(kwargs), tuple(grid) if not callable(grid) else grid))
        return None

    saved = (tjit.JITFunction.run, _backend.tiling, _backend._sm_count, _backend._STATE.interpret)
    cuda_tiling = _backend._tiling.__wrapped__
    tjit.JITFunction.run = record
    _backend.tiling = lambda rows, cols, device, tile=4096, warps=0: cuda_tiling(int(rows), int(cols), "cuda", 0,
                                                                              False, tile, warps)
    _backend._sm_count = lambda index: SMS
    _backend._STATE.interpret = True  # lets the 'triton' backend take CPU tensors; nothing runs them
    try:
        with fastvae.set_backend("triton"):
            call()
    finally:
        tjit.JITFunction.run, _backend.tiling, _backend._sm_count, _backend._STATE.interpret = saved
    return launches


# ----------------------------------------------------------------------------------------------- compile


def _tools() -> Path:
    import triton

    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


@dataclasses.dataclass
class Compiled:
    launch: Launch
    constexprs: dict
    num_warps: int
    cubin: bytes


def compile_launch(launch: Launch) -> Compiled:
    """Compile one captured launch for sm_90 with the specialization the JIT would apply."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime import jit as tjit

    target = GPUTarget("cuda", 90, 32)
    backend = make_backend(target)
    kernel = launch.kernel
    binder = tjit.create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*launch.args, **launch.kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, launch.kwargs, bound, specialization, options)
    compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target, options=options.__dict__)
    names = {(i,): name for i, name in enumerate(kernel.arg_names)}
    return Compiled(launch, {names.get(k, str(k)): v for k, v in constexprs.items()}, options.num_warps,
                    compiled.asm["cubin"])


def _cuobjdump(cubin: bytes, flag: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        return subprocess.run([str(_tools() / "cuobjdump"), flag, str(path)], capture_output=True, text=True,
                              check=True).stdout


def resources(cubin: bytes) -> dict:
    """Registers, stack, local (spill) and shared bytes per thread / CTA from ``cuobjdump -res-usage``."""
    text = _cuobjdump(cubin, "-res-usage")
    m = re.search(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)", text)
    if not m:
        raise RuntimeError(f"cannot read the resource usage: {text[:400]}")
    regs, stack, shared, local = (int(v) for v in m.groups())
    return {"registers": regs, "stack_bytes": stack, "shared_bytes": shared, "local_bytes": local}


# ----------------------------------------------------------------------------------------------- SASS


@dataclasses.dataclass
class Instr:
    addr: int
    pred: str
    op: str
    text: str

    @property
    def opcode(self) -> str:
        return self.op.split(".")[0]


_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")


def parse_sass(text: str) -> list[Instr]:
    out = []
    for line in text.splitlines():
        m = _LINE.search(line)
        if m:
            out.append(Instr(int(m.group(1), 16), (m.group(2) or "").strip(), m.group(3), m.group(4).strip()))
    return out


def access_bytes(instr: Instr) -> int:
    """Bytes per thread of a global load or store (LDG/STG), from its width suffix."""
    parts = instr.op.split(".")
    for p in parts[1:]:
        if p.isdigit():
            return int(p) // 8
        if p in ("U8", "S8"):
            return 1
        if p in ("U16", "S16"):
            return 2
    return 4


@dataclasses.dataclass
class Loop:
    start: int  # address of the first instruction of the body (the back-edge's target)
    end: int    # address of the back-edge
    depth: int = 0


def analyze(instrs: list[Instr]) -> dict:
    """Loops (by back-edges), the counted range (up to the last EXIT) and the instructions of each depth."""
    exits = [i.addr for i in instrs if i.opcode == "EXIT"]
    last_exit = max(exits) if exits else instrs[-1].addr
    counted = [i for i in instrs if i.addr <= last_exit]
    loops = []
    for i in counted:
        if i.opcode == "BRA":
            m = re.match(r"`?\(?(0x[0-9a-f]+)", i.text)
            if m and int(m.group(1), 16) <= i.addr:
                loops.append(Loop(int(m.group(1), 16), i.addr))
    for lp in loops:
        lp.depth = sum(1 for o in loops if o.start <= lp.start and lp.end <= o.end)
    return {"instructions": counted, "loops": sorted(loops, key=lambda lp: (lp.depth, lp.start)),
            "excluded": len(instrs) - len(counted)}


def _depth_of(addr: int, loops: list[Loop]) -> int:
    return max([lp.depth for lp in loops if lp.start <= addr <= lp.end], default=0)


def executed_counts(info: dict, trips: dict[int, float]) -> dict:
    """Executed instructions per thread, and global bytes per thread, with ``trips[depth]`` passes through the
    loops of each depth per pass through their parent (depth 0: the whole kernel, once)."""
    loops = info["loops"]
    weight_by_depth = {0: 1.0}
    for depth in range(1, max([lp.depth for lp in loops], default=0) + 1):
        weight_by_depth[depth] = weight_by_depth[depth - 1] * trips.get(depth, 1.0)
    total = 0.0
    by_depth: dict[int, int] = {}
    loads = {}
    stores = {}
    mem_bytes = 0.0
    for i in info["instructions"]:
        depth = _depth_of(i.addr, loops)
        w = weight_by_depth[depth]
        total += w
        by_depth[depth] = by_depth.get(depth, 0) + 1
        if i.opcode in ("LDG", "STG"):
            width = access_bytes(i)
            table = loads if i.opcode == "LDG" else stores
            table[width] = table.get(width, 0) + 1
            mem_bytes += w * width
    innermost = max(by_depth)
    body_loads = [access_bytes(i) for i in info["instructions"]
                  if i.opcode == "LDG" and _depth_of(i.addr, loops) == innermost]
    return {"per_thread": total, "static_by_depth": by_depth, "load_widths": loads, "store_widths": stores,
            "global_bytes_per_thread": mem_bytes, "body_load_bytes_per_thread": sum(body_loads)}


# ----------------------------------------------------------------------------------------------- model


def occupancy(regs: int, shared: int, threads: int) -> int:
    g = MODEL["register_granularity"]
    per_cta = math.ceil(regs / g) * g * threads
    by_regs = MODEL["registers_per_sm"] // per_cta if per_cta else MODEL["max_ctas_per_sm"]
    by_threads = MODEL["max_threads_per_sm"] // threads
    by_shared = MODEL["shared_bytes_per_sm"] // shared if shared else MODEL["max_ctas_per_sm"]
    return max(0, min(by_regs, by_threads, by_shared, MODEL["max_ctas_per_sm"]))


def sm_fill(programs: int, sms: int, units_per_program: Optional[list] = None) -> float:
    """Mean over max work of an SM, programs dealt to SMs round-robin (``units_per_program``: the work of
    each program, one unit each by default): the share of the run during which no SM is idle."""
    if programs <= 0:
        return 1.0
    load = [0.0] * min(sms, programs)
    for p in range(programs):
        load[p % len(load)] += 1.0 if units_per_program is None else units_per_program[p]
    return (sum(load) / sms) / max(load) if max(load) > 0 else 1.0


def predict(machine: dict, *, programs: int, threads: int, ctas_per_sm: int, instr_per_thread: float,
            bytes_total: float, inflight_per_thread: float, fill: Optional[float] = None) -> dict:
    """Predicted time (s) and fraction of copy bandwidth of one launch under the machine model."""
    bw = machine["copy_tbps"] * 1e12
    issue_rate = machine["sms"] * MODEL["thread_instructions_per_clock_per_sm"] * machine["clock_ghz"] * 1e9 \
        * MODEL["issue_efficiency"]
    t_issue = programs * threads * instr_per_thread / issue_rate
    t_mem = bytes_total / bw
    resident = max(1, min(ctas_per_sm, math.ceil(programs / machine["sms"]))) * threads
    needed = bw / machine["sms"] * MODEL["memory_latency_ns"] * 1e-9
    in_flight = resident * inflight_per_thread
    stretch = max(1.0, needed / in_flight) if in_flight > 0 else 1.0
    if fill is None:
        fill = sm_fill(programs, machine["sms"])
    t = max(t_mem * stretch, t_issue) / fill
    return {"time_us": t * 1e6, "issue_bound": t_issue > t_mem * stretch, "latency_stretch": stretch,
            "wave_fill": fill, "frac_copy": (t_mem / t) if t > 0 else None}


# ----------------------------------------------------------------------------------------------- variants


def _t(shape, dtype, grad=False, fn=torch.randn):
    return fn(*shape, dtype=getattr(torch, dtype)).requires_grad_(grad)


def _latent_calls(shape, dtype):
    import fastvae as fv

    def make():
        return _t(shape, dtype, True), (_t(shape, dtype, True) * 0.5).detach().requires_grad_()

    def fwd_kl():
        mu, lv = make()
        return fv.reparameterize_kl(mu, lv, reduction="none")

    def bwd_kl():
        z, kl = fwd_kl()
        torch.autograd.backward([z, kl], [torch.ones_like(z), torch.ones_like(kl)])

    def fwd_z():
        mu, lv = make()
        return fv.reparameterize(mu, lv)

    def bwd_z():
        fwd_z().backward(torch.ones(shape, dtype=getattr(torch, dtype)))

    def fwd_eps():
        mu, lv = make()
        return fv.reparameterize(mu, lv, torch.randn(shape, dtype=getattr(torch, dtype)))

    def fwd_klonly():
        mu, lv = make()
        return fv.gaussian_kl(mu, lv, reduction="none")

    def bwd_klonly():
        fwd_klonly().backward(torch.ones(shape[0]))

    return {"z+kl fwd": fwd_kl, "z+kl bwd": bwd_kl, "z fwd": fwd_z, "z fwd (eps given)": fwd_eps, "z bwd": bwd_z,
            "kl fwd": fwd_klonly, "kl bwd": bwd_klonly}


def _likelihood_calls(kind, shape, dtype):
    import fastvae as fv
    from fastvae.ops.likelihoods import KINDS, LOGIT_KINDS

    fn = getattr(fv, "mse" if kind == "mse" else f"{kind}_nll")

    def inputs(grad):
        x = _t(shape, dtype, grad)
        t = _t(shape, dtype, fn=torch.rand) if KINDS[kind] in LOGIT_KINDS else _t(shape, dtype)
        return x, t

    def fwd_grad():
        x, t = inputs(True)
        return fn(x, t)

    def fwd_nograd():
        x, t = inputs(False)
        return fn(x, t)

    def bwd(value):
        def run():
            fwd_grad().backward(torch.tensor(value))
        return run

    return {"fwd+grad": fwd_grad, "fwd": fwd_nograd, "bwd (grad 1)": bwd(1.0), "bwd (grad 0.5)": bwd(0.5)}


LATENT_SHAPES = ((16384, 64), (65536, 128))
LIKELIHOOD_SHAPES = ((16384, 4096), (4096, 12288))
DTYPES = ("float32", "bfloat16")


def variants(only: Optional[str] = None, want_dtype: Optional[str] = None,
             want_shape: Optional[tuple] = None) -> list[dict]:
    """Each kernel variant the launchers pick at the benchmark's shapes: {family, case, shape, dtype, call};
    ``only`` keeps those whose family or case contains it, ``want_dtype`` and ``want_shape`` those that match."""
    out = []
    for shape in LATENT_SHAPES:
        for dtype in DTYPES:
            for op, call in _latent_calls(shape, dtype).items():
                out.append({"family": "latent", "case": op, "shape": shape, "dtype": dtype, "call": call})
    from fastvae.ops.likelihoods import KINDS  # every likelihood the kernels know

    for kind in KINDS:
        for shape in LIKELIHOOD_SHAPES:
            for dtype in DTYPES:
                for op, call in _likelihood_calls(kind, shape, dtype).items():
                    out.append({"family": kind, "case": op, "shape": shape, "dtype": dtype, "call": call})
    return [v for v in out if (only is None or only in v["family"] or only in v["case"])
            and (want_dtype is None or v["dtype"] == want_dtype)
            and (want_shape is None or tuple(v["shape"]) == tuple(want_shape))]


# ----------------------------------------------------------------------------------------------- per launch


def _trips(launch: Launch, compiled: Compiled, case: str) -> dict:
    """Loop trip counts of a launch, by SASS loop depth (see the module docstring)."""
    a = dict(zip(launch.kernel.arg_names, launch.args))
    c = compiled.constexprs
    get = lambda k: c.get(k, a.get(k))  # noqa: E731  (an int equal to 1 became a constexpr)
    name = launch.name
    if name == "finish_kernel":
        return {1: math.ceil(get("B") / get("BLOCK")), 2: max(0, get("a_parts") - 1)}
    split_cols, block_d = get("split_cols"), get("BLOCK_D")
    inner = math.ceil(split_cols / block_d) if split_cols else 1
    if name == "nll_backward_kernel":
        tiles = get("n_tiles") / launch.grid[0]
        if "grad 1" in case:  # a uniform branch skips the loops (scalar grad), or the column loop (per row)
            return {1: 0.0} if c.get("G_SCALAR") else {1: tiles, 2: 0.0}
        return {1: tiles, 2: inner}
    return {1: inner}


def _elements(launch: Launch) -> int:
    a = dict(zip(launch.kernel.arg_names, launch.args))
    if launch.name == "finish_kernel":
        return a["B"] if isinstance(a.get("B"), int) else 1
    return a["B"] * a["D"]


def report_launch(launch: Launch, case: str) -> dict:
    compiled = compile_launch(launch)
    res = resources(compiled.cubin)
    info = analyze(parse_sass(_cuobjdump(compiled.cubin, "-sass")))
    trips = _trips(launch, compiled, case)
    counts = executed_counts(info, trips)
    threads = compiled.num_warps * 32
    programs = math.prod(launch.grid)
    elements = _elements(launch)
    instr_total = counts["per_thread"] * threads * programs
    bytes_total = counts["global_bytes_per_thread"] * threads * programs
    ctas = occupancy(res["registers"], res["shared_bytes"], threads)
    flags = {k: v for k, v in compiled.constexprs.items() if not k.startswith("BLOCK") and isinstance(v, (bool, int))}
    record = {
        "kernel": launch.name, "flags": flags,
        "block": {k: compiled.constexprs[k] for k in ("BLOCK_R", "BLOCK_D", "BLOCK") if k in compiled.constexprs},
        "grid": list(launch.grid), "num_warps": compiled.num_warps, **res, "ctas_per_sm": ctas,
        "load_widths": counts["load_widths"], "store_widths": counts["store_widths"],
        "sass_instructions": len(info["instructions"]), "sass_excluded": info["excluded"],
        "loops": [[lp.depth, lp.start, lp.end] for lp in info["loops"]], "trips": trips,
        "instr_per_thread": counts["per_thread"], "elements": elements,
        "instr_per_element": instr_total / elements if elements else None,
        "bytes_per_element": bytes_total / elements if elements else None,
        "instr_per_byte": instr_total / bytes_total if bytes_total else None,
        "total_instructions": instr_total, "total_bytes": bytes_total,
        "predicted": {},
    }
    units = None
    if launch.name == "nll_backward_kernel":  # persistent: tile t goes to program t % programs
        n_tiles = dict(zip(launch.kernel.arg_names, launch.args))["n_tiles"]
        units = [len(range(p, n_tiles, programs)) for p in range(programs)]
    for name, machine in MACHINES.items():
        record["predicted"][name] = predict(machine, programs=programs, threads=threads, ctas_per_sm=ctas,
                                            instr_per_thread=counts["per_thread"], bytes_total=bytes_total,
                                            inflight_per_thread=counts["body_load_bytes_per_thread"],
                                            fill=sm_fill(programs, machine["sms"], units))
    return record


def run(only: Optional[str] = None, log=print, dtype: Optional[str] = None, shape: Optional[tuple] = None) -> dict:
    import triton

    report = {"schema": SCHEMA, "target": "sm_90a", "triton": triton.__version__, "torch": torch.__version__,
              "machines": MACHINES, "model": MODEL, "method": __doc__.split("Method\n------\n")[1].split("\n\n")[0:5],
              "variants": []}
    for v in variants(only, dtype, shape):
        launches = capture(v["call"])
        # the forward of a backward case is not this case's: keep the launches of the last autograd pass
        if "bwd" in v["case"]:
            fwd = {"latent_forward_kernel", "nll_forward_kernel", "finish_kernel"}
            launches = [lp for lp in launches if lp.name not in fwd] or launches
        for launch in launches:
            try:
                rec = report_launch(launch, v["case"])
            except Exception as err:  # report, do not hide
                rec = {"kernel": launch.name, "error": f"{type(err).__name__}: {err}"}
            rec.update(family=v["family"], case=v["case"], shape=list(v["shape"]), dtype=v["dtype"])
            report["variants"].append(rec)
            if "error" in rec:
                log(f"{v['family']:9} {v['case']:15} {v['dtype']:8} {rec['kernel']}: ERROR {rec['error'][:200]}")
            else:
                p = rec["predicted"]["H100"]
                log(f"{v['family']:9} {v['case']:15} {v['dtype']:8} {str(tuple(v['shape'])):14} {rec['kernel']:22} "
                    f"regs {rec['registers']:3} ctas {rec['ctas_per_sm']:2} i/e {rec['instr_per_element'] or 0:7.2f} "
                    f"i/B {rec['instr_per_byte'] or 0:6.2f} pred H100 {100 * (p['frac_copy'] or 0):5.1f}%")
    report["noise"] = noise_cost(report)
    return report


# ----------------------------------------------------------------------------------------------- outputs


def _fmt(x, nd=1):
    return "n/a" if x is None else f"{x:.{nd}f}"


def pct(record: dict, frac: Optional[float]) -> str:
    """A streaming kernel's predicted fraction of copy bandwidth; none for the one-program reduction and for
    a backward that moves (nearly) no bytes, whose time is what counts."""
    if frac is None or record["kernel"] == "finish_kernel" or (record["bytes_per_element"] or 0) < 0.5:
        return "-"
    return f"{100 * frac:.0f}"


def noise_cost(report: dict) -> list[dict]:
    """Instructions per normal: the z-only forward with in-kernel noise minus the same with eps read."""
    out = []
    by_key = {(r["case"], r["dtype"], tuple(r["shape"])): r for r in report["variants"]
              if r.get("family") == "latent" and "error" not in r}
    for (case, dtype, shape), r in by_key.items():
        if case == "z fwd" and ("z fwd (eps given)", dtype, shape) in by_key:
            base = by_key[("z fwd (eps given)", dtype, shape)]
            out.append({"dtype": dtype, "shape": list(shape),
                        "instr_per_normal": r["instr_per_element"] - base["instr_per_element"]})
    return out


def markdown(report: dict) -> str:
    noise = "; ".join(f"{n['dtype']} {n['shape'][0]}x{n['shape'][1]}: {n['instr_per_normal']:.1f}"
                      for n in report.get("noise", []))
    lines = [
        f"Static sm_90a report (`python bench/static_sm90.py`; triton {report['triton']}): executed-path SASS "
        "instructions per element and per HBM byte (bytes read off the global loads and stores of the code), "
        f"registers, CTAs per SM, access widths, and the predicted fraction of copy bandwidth under the model "
        f"of the script ({MODEL['issue_efficiency']:.0%} issue efficiency, {MODEL['memory_latency_ns']} ns latency; "
        "H100 3.0 TB/s, H200 4.3 TB/s). Predictions, not measurements.",
        "",
        f"Instructions per normal of the in-kernel noise (z forward minus z forward with eps read): {noise}.",
        "",
        "| family | case | dtype | shape | kernel | regs | CTAs/SM | spill B | loads / stores (bytes x count) "
        "| instr/elem | instr/byte | pred. us H100 | pred. % copy H100 | H200 |",
        "|---|---|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["variants"]:
        if "error" in r:
            lines.append(f"| {r['family']} | {r['case']} | {r['dtype']} | {r['shape'][0]}x{r['shape'][1]} | "
                         f"{r['kernel']} | error | | | | | | | | |")
            continue
        widths = " / ".join(", ".join(f"{w}x{n}" for w, n in sorted(d.items(), key=lambda kv: -int(kv[0])))
                            or "-" for d in (r["load_widths"], r["store_widths"]))
        h100, h200 = (r["predicted"][m]["frac_copy"] for m in ("H100", "H200"))
        lines.append(
            f"| {r['family']} | {r['case']} | {r['dtype']} | {r['shape'][0]}x{r['shape'][1]} | {r['kernel']} | "
            f"{r['registers']} | {r['ctas_per_sm']} | {r['local_bytes']} | {widths} | {_fmt(r['instr_per_element'])} | "
            f"{_fmt(r['instr_per_byte'], 2)} | {_fmt(r['predicted']['H100']['time_us'])} | {pct(r, h100)} | "
            f"{pct(r, h200)} |")
    return "\n".join(lines)


BEGIN, END = "<!-- static-sm90:begin -->", "<!-- static-sm90:end -->"


def update_readme(path: Path, report: dict) -> None:
    block = f"{BEGIN}\n{markdown(report)}\n{END}"
    text = path.read_text() if path.exists() else "# fastvae benchmarks\n"
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def main(argv=None) -> int:
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("bench/static_sm90.py compiles the kernels: run it in a process without TRITON_INTERPRET")
    os.environ.pop("TRITON_INTERPRET", None)  # compiled kernels, never the interpreter (before triton loads)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=None, help="only the variants whose family or case contains this text")
    parser.add_argument("--dtype", default=None, choices=DTYPES, help="only this dtype")
    parser.add_argument("--shape", default=None, help="only this shape, e.g. 16384x4096")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "static-sm90.json"))
    parser.add_argument("--readme", default=str(ROOT / "bench" / "README.md"))
    parser.add_argument("--no-readme", action="store_true")
    args = parser.parse_args(argv)
    shape = tuple(int(v) for v in args.shape.split("x")) if args.shape else None
    report = run(args.only, dtype=args.dtype, shape=shape)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")
    if not args.no_readme:
        update_readme(Path(args.readme), report)
        print(f"updated {args.readme}")
    return 0 if all("error" not in r for r in report["variants"]) else 1


if __name__ == "__main__":
    sys.exit(main())
