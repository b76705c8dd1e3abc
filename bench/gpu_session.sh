#!/usr/bin/env bash
# The GPU checks and measurements of one session, in stages that each fit a 10-minute command.
#
#   bash bench/gpu_session.sh info               # GPU, driver, torch/triton/CUDA versions, copy bandwidth
#   bash bench/gpu_session.sh tests              # the whole suite on CUDA, then tests/test_cuda.py verbose
#   bash bench/gpu_session.sh bench OPS DTYPES   # `fastvae bench --device cuda` for those ops and dtypes,
#                                                # merged into bench/results/cuda-<device>.json
#   bash bench/gpu_session.sh report             # plots and the bench/README.md table from that JSON
#
# OPS and DTYPES are comma-separated (see `python -m fastvae bench -h`); extra arguments after them
# go to `fastvae bench`. A full sweep is too long for one command: run it as several `bench` stages,
# e.g. `reparameterize_kl,beta_vae_loss float32`, then the likelihoods, then bfloat16, each merged
# into the same JSON, and finish with `report`.
#
# It runs from the source tree with the machine's own python3 (set PYTHON to use another), without
# installing anything, since a GPU machine may have no package index to install from; the Triton
# kernels are found in kernels/. When OUT is set (a folder that is copied back), logs and the
# results are copied there as each stage ends, also when the stage is cut short (the bench JSON is
# rewritten after each group of cases, so a cut-short stage keeps what it finished). Copy the JSON
# back into bench/results/ before the next stage, so that its --merge sees the earlier stages.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET
stage="${1:-}"
logdir="${OUT:-${TMPDIR:-/tmp}/fastvae-gpu-session}"
mkdir -p "$logdir"

save() {
  if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT/results"
    cp -f bench/results/cuda-* "$OUT/results/" 2>/dev/null || true
    cp -f bench/README.md "$OUT/" 2>/dev/null || true
  fi
}
trap save EXIT
trap 'exit 143' TERM INT  # so that save runs when the command is cut short

case "$stage" in
  info)
    nvidia-smi || true
    "$PY" - <<'EOF'
import platform, torch, triton
print("python", platform.python_version(), "torch", torch.__version__, "triton", triton.__version__,
      "cuda", torch.version.cuda)
if not torch.cuda.is_available():
    raise SystemExit("no CUDA device visible to torch")
p = torch.cuda.get_device_properties(0)
print(p.name, p.multi_processor_count, "SMs,", round(p.total_memory / 2**30, 1), "GiB,",
      "L2", getattr(p, "L2_cache_size", 0) // 2**20, "MiB")
from fastvae import bench
print("copy bandwidth", bench.copy_bandwidth("cuda"))
EOF
    ;;
  tests)
    "$PY" -m pytest -q -x -p no:cacheprovider tests 2>&1 | tee "$logdir/tests.log"
    "$PY" -m pytest -q -rA -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$logdir/test_cuda.log"
    ;;
  bench)
    ops="${2:?bench needs OPS, e.g. beta_vae_loss}"
    dtypes="${3:?bench needs DTYPES, e.g. float32}"
    shift 3
    "$PY" -m fastvae bench --device cuda --ops "$ops" --dtypes "$dtypes" --update-results --merge --no-plot \
      --readme none "$@" \
      2>&1 | tee -a "$logdir/bench.log"
    ;;
  report)
    shopt -s nullglob
    reports=(bench/results/cuda-*.json)
    if [ ${#reports[@]} -eq 0 ]; then
      echo "no bench/results/cuda-*.json: run the bench stages first" >&2
      exit 2
    fi
    for report in "${reports[@]}"; do
      "$PY" -m fastvae bench --plot-only "$report" --update-results 2>&1 | tee -a "$logdir/report.log"
    done
    ;;
  *)
    sed -n '2,/^set /p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
