"""The static sm_90 report (bench/static_sm90.py) reads the machine code right: run on a few variants in a
subprocess (compiled kernels, never the interpreter) and its numbers checked against what is known of
those kernels; and its SASS parser on a hand-written listing."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("static") / "static.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    for only, dtype, shape in (("bernoulli", "float32", "16384x4096"), ("z fwd", "float32", "16384x64")):
        part = out.with_name(f"{only.replace(' ', '_')}.json")
        proc = subprocess.run([sys.executable, str(ROOT / "bench" / "static_sm90.py"), "--only", only, "--dtype", dtype,
                               "--shape", shape, "--out", str(part), "--no-readme"],
                              env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0 and "ptxas" in proc.stderr and "not found" in proc.stderr.lower():
            pytest.skip("this triton build ships no ptxas")
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    variants = []
    for part in out.parent.glob("*.json"):
        variants += json.loads(part.read_text())["variants"]
    return {(v["family"], v["case"], v["kernel"]): v for v in variants}


def test_the_bernoulli_kernel_reads_and_writes_16_byte_vectors(report):
    v = report[("bernoulli", "fwd+grad", "nll_forward_kernel")]
    assert "error" not in v
    assert set(v["load_widths"]) == {"16"} and "16" in v["store_widths"], (v["load_widths"], v["store_widths"])
    # read x and t, write the gradient: 12 bytes an element in float32, read off the code
    assert abs(v["bytes_per_element"] - 12.0) < 0.5, v["bytes_per_element"]
    assert 0 < v["registers"] <= 255 and v["local_bytes"] == 0 and v["ctas_per_sm"] >= 1
    assert 10 < v["instr_per_element"] < 100
    assert abs(v["instr_per_byte"] - v["instr_per_element"] / v["bytes_per_element"]) < 1e-9
    assert v["loops"] and v["trips"]["1"] == 1  # one column loop, one pass through it at D = BLOCK_D
    no_grad = report[("bernoulli", "fwd", "nll_forward_kernel")]
    assert abs(no_grad["bytes_per_element"] - 8.0) < 0.5
    assert no_grad["instr_per_element"] < v["instr_per_element"]


def test_the_backward_after_loss_backward_is_a_few_instructions(report):
    one = report[("bernoulli", "bwd (grad 1)", "nll_backward_kernel")]
    half = report[("bernoulli", "bwd (grad 0.5)", "nll_backward_kernel")]
    assert one["instr_per_element"] < 1.0 and one["trips"]["1"] == 0
    assert half["instr_per_element"] > 2 and abs(half["bytes_per_element"] - 8.0) < 0.5  # read and write gx


def test_the_noise_costs_what_the_report_says(report):
    with_noise = report[("latent", "z fwd", "latent_forward_kernel")]
    given = report[("latent", "z fwd (eps given)", "latent_forward_kernel")]
    assert with_noise["instr_per_element"] - given["instr_per_element"] > 10   # Philox + Box-Muller
    assert given["bytes_per_element"] > with_noise["bytes_per_element"]        # eps is read from memory


def test_sass_parser_on_a_listing():
    spec = importlib.util.spec_from_file_location("static_sm90", ROOT / "bench" / "static_sm90.py")
    S = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("static_sm90", S)
    spec.loader.exec_module(S)
    text = "\n".join([
        "        /*0000*/                   MOV R1, c[0x0][0x28] ;",
        "        /*0010*/               @P0 BRA 0x80 ;",
        "        /*0020*/                   LDG.E.128 R4, desc[UR4][R2.64] ;",
        "        /*0030*/                   LDG.E.U16 R8, desc[UR4][R2.64] ;",
        "        /*0040*/                   FFMA R4, R4, R5, R6 ;",
        "        /*0050*/                   STG.E.64 desc[UR4][R2.64], R4 ;",
        "        /*0060*/              @!P1 BRA 0x20 ;",
        "        /*0070*/                   EXIT ;",
        "        /*0080*/                   BRA 0x80;",
    ])
    info = S.analyze(S.parse_sass(text))
    assert [(lp.start, lp.end, lp.depth) for lp in info["loops"]] == [(0x20, 0x60, 1)]
    assert info["excluded"] == 1  # the trailing self-branch after EXIT
    counts = S.executed_counts(info, {1: 3})
    assert counts["per_thread"] == 2 + 3 * 5 + 1
    assert counts["load_widths"] == {16: 1, 2: 1} and counts["store_widths"] == {8: 1}
    assert counts["global_bytes_per_thread"] == 3 * (16 + 2 + 8)
