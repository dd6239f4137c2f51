#!/usr/bin/env bash
# Diagnosis of C++ errors of the CLRB op (about 20 s, after `bash bench/gpu_session.sh build`): calls
# torch.ops.csakd.clrb_forward with bad arguments, each case in its own process, and prints whether the
# TORCH_CHECK became a RuntimeError or killed the process. Cases: the CPU and CUDA dispatch keys, inputs with and
# without requires_grad (the op's Python autograd takes different paths), and three throw sites (check_impl,
# check_clrb_args in clrb.cpp, the per-device kernel); and, as the crash was first seen after other tests had run,
# the CPU tests of tests/ops/test_clrb_op.py in one process. For the first crash it records a C++ backtrace with
# (cuda-)gdb. Everything also goes to $OUT/gpu_diag.log.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/csakd-gpu}
mkdir -p "$OUT"
LOG="$OUT/gpu_diag.log"
: >"$LOG"
say() { echo "$*" | tee -a "$LOG"; }

say "libraries: $(ls csakd/_C*.so 2>/dev/null | tr '\n' ' ')(Python imports the interpreter-tagged one first)"
for so in csakd/_C*.so; do
  say "$so NEEDED: $(readelf -d "$so" 2>/dev/null | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | tr '\n' ' ')"
done

case_file=$(mktemp --suffix=.py)
trap 'rm -f "$case_file"' EXIT
cat >"$case_file" <<'EOF'
import sys

import torch

import csakd.ops.clrb  # noqa: F401  (loads csakd._C and the op's autograd)

device, grad, site = sys.argv[1], sys.argv[2] == "grad", sys.argv[3]
g = torch.Generator().manual_seed(0)
nf, gc, groups = 8, 4, 2
weights = [torch.randn(gc if k < 4 else nf, (nf + k * gc) // groups, 3, 3, generator=g) for k in range(5)]
biases = [torch.randn(gc if k < 4 else nf, generator=g) for k in range(5)]
x = torch.randn(1, nf, 5, 5, generator=g)
x, weights, biases = (t.to(device).requires_grad_(grad) for t in [x]), [t.to(device) for t in weights], \
    [t.to(device) for t in biases]
x = next(x)
args = {"impl": (x, weights, biases, groups, "nope"),              # check_impl
        "groups": (x, weights, biases, 3, "auto"),                 # check_clrb_args (clrb.cpp)
        "kernel": (x, weights, biases, groups, "mma" if device == "cpu" else "direct")}[site]
if site == "kernel" and device == "cuda":  # a dtype the direct kernel rejects (choose_path in clrb_cuda.cpp)
    args = (x.double(), [w.double() for w in weights], [b.double() for b in biases], groups, "direct")
try:
    torch.ops.csakd.clrb_forward(*args)
    print("NO ERROR (unexpected)")
except RuntimeError as error:
    print("RuntimeError:", str(error).splitlines()[0][:100])
EOF

devices=(cpu)
python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" && devices+=(cuda)
pids=()
names=()
run_case() {  # name, command...: runs the command in the background, its output and exit status in diag_<name>.txt
  local name=$1
  shift
  (timeout 150 "$@" >"$OUT/diag_$name.txt" 2>&1; echo "rc=$?" >>"$OUT/diag_$name.txt") &
  pids+=($!)
  names+=("$name")
}
pytest_cmd=(python3 -X faulthandler -m pytest tests/ops/test_clrb_op.py -x -q -p no:cacheprovider -m "not gpu")
run_case pytest-cpu-tests "${pytest_cmd[@]}"
for device in "${devices[@]}"; do
  for grad in nograd grad; do
    for site in impl groups kernel; do
      run_case "$device-$grad-$site" python3 -X faulthandler "$case_file" "$device" "$grad" "$site"
    done
  done
done
wait "${pids[@]}"

first_crash=""
for name in "${names[@]}"; do
  result=$(grep -m1 -E "RuntimeError|NO ERROR|Fatal Python error| passed| failed" "$OUT/diag_$name.txt")
  rc=$(sed -n 's/^rc=//p' "$OUT/diag_$name.txt")
  say "$(printf '%-20s rc=%-4s %s' "$name" "$rc" "${result:-$(tail -n 2 "$OUT/diag_$name.txt" | head -n 1)}")"
  if [ "$rc" != "0" ] && [ -z "$first_crash" ]; then first_crash=$name; fi
done

if [ -n "$first_crash" ]; then
  if [ "$first_crash" = pytest-cpu-tests ]; then
    grep -B2 -A12 "Fatal Python error" "$OUT/diag_$first_crash.txt" | tee -a "$LOG"
    crash_cmd=("${pytest_cmd[@]}")
  else
    IFS=- read -r device grad site <<<"$first_crash"
    crash_cmd=(python3 "$case_file" "$device" "$grad" "$site")
  fi
  crash_cmd[0]=$(python3 -c "import sys; print(sys.executable)")  # the interpreter itself, not a shim script
  debugger=$(command -v cuda-gdb || command -v gdb || true)
  say "backtrace of $first_crash with ${debugger:-no debugger found}:"
  if [ -n "$debugger" ]; then
    timeout 180 "$debugger" -batch -ex "set pagination off" -ex run -ex bt -ex "info sharedlibrary" \
      --args "${crash_cmd[@]}" >"$OUT/diag_backtrace.txt" 2>&1
    grep -E "^#[0-9]+ " "$OUT/diag_backtrace.txt" | head -n 40 | tee -a "$LOG"
  fi
  rm -f "$OUT"/diag_*-*.txt  # the summary above holds them; leave room for the backtrace in $OUT
else
  say "every case raised RuntimeError"
  rm -f "$OUT"/diag_*-*.txt
fi
