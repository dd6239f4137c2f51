#!/usr/bin/env bash
# One driver for a lent GPU machine (see /work/.library/device): build the extension there, run the whole test
# suite on CUDA, then the benchmarks. Stages are chosen by arguments, e.g.
#   bash bench/gpu_session.sh env build tests latency kernels train
# Everything is logged under $OUT (at most 8 files come back); CSAKD_COMMIT names the commit measured.
# Budget knobs: TEST_TIMEOUT (s per pytest call), LATENCY_ARGS (e.g. "--compile-mode default --batch 1": Inductor's
# max-autotune compiles for minutes per model and dtype), TRAIN_STEPS.
set -uo pipefail
OUT=${OUT:-/tmp/csakd-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-gpu}
# Triton's compiled kernels in an ignored folder of the checkout: kept between calls while the machine is warm.
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$PWD/.cache/triton}
# The verdicts of the checks behind backend "auto" (csakd info --verify): kept with the results.
export CSAKD_CACHE_DIR=${CSAKD_CACHE_DIR:-$OUT/csakd-cache}
log() { echo "=== $(date -u +%H:%M:%S) $*" | tee -a "$OUT/session.log"; }

for stage in "$@"; do
  case "$stage" in
    env)
      log env
      { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
        python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
      } 2>&1 | tee -a "$OUT/session.log" ;;
    build)
      log build
      CSAKD_BUILD_CUDA=${CSAKD_BUILD_CUDA:-1} MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps --no-index -e . \
        >"$OUT/build.log" 2>&1; echo "build rc=$?" | tee -a "$OUT/session.log"
      python3 -m csakd info 2>&1 | tee -a "$OUT/session.log"
      # The equivalence checks that gate "auto" (forward and backward of each fast op against the reference at the
      # student's and the teacher's widths), in bf16 and fp32: a failure here is a bug to fix before any timing.
      for preset in student teacher; do
        for precision in bf16 fp32; do
          python3 -m csakd info --verify --device cuda --precision "$precision" --preset "$preset" 2>&1 \
            | tail -n 4 | tee -a "$OUT/session.log"
        done
      done ;;
    tests)
      # The GPU-marked property tests (larger shapes, bf16/fp16 on CUDA), then the device-aware suites.
      # The interpreter-only CPU variants of the kernel tests run in CI.
      log tests
      # Tests need correct kernels, not tuned ones: one config per Triton kernel (CSAKD_AUTOTUNE=0).
      CSAKD_AUTOTUNE=0 timeout "${TEST_TIMEOUT:-300}" python3 -X faulthandler -m pytest -q -p no:cacheprovider -m gpu \
        --durations=10 tests >"$OUT/pytest_gpu.log" 2>&1; echo "pytest -m gpu rc=$?" | tee -a "$OUT/session.log"
      tail -n 15 "$OUT/pytest_gpu.log"
      CSAKD_AUTOTUNE=0 timeout "${TEST_TIMEOUT:-300}" python3 -X faulthandler -m pytest -q -p no:cacheprovider tests/test_backends.py \
        tests/test_models.py tests/test_losses.py tests/test_metrics.py tests/test_io.py tests/test_inference.py \
        tests/test_flows.py tests/test_wiring.py tests/ops/test_verify.py tests/train/test_train_fuse.py \
        >"$OUT/pytest_device.log" 2>&1; echo "pytest device-aware rc=$?" | tee -a "$OUT/session.log"
      tail -n 15 "$OUT/pytest_device.log" ;;
    latency)
      log latency
      python3 bench/latency.py ${LATENCY_ARGS:-} --out "$OUT/latency_gpu.json" 2>&1 | tail -n 40 | tee -a "$OUT/session.log" ;;
    kernels)
      log kernels
      for b in csa losses clrb; do
        [ -f "bench/$b.py" ] && python3 "bench/$b.py" --out "$OUT/${b}_gpu.json" 2>&1 | tail -n 30 | tee -a "$OUT/session.log"
      done ;;
    train)
      # Issue 10 step 3: co-train the paper's teacher and student (bf16 autocast, the fast backend) on tiles of the
      # real AVIRIS scenes with the paper's degradation, then score them and the baselines on the held-out region.
      log train
      data=${CSAKD_DATA:-../shared/data}
      if ! ls "$data"/aviris_*x*.npz >/dev/null 2>&1; then
        echo "train: no AVIRIS scenes under $data, skipped" | tee -a "$OUT/session.log"; continue
      fi
      rm -rf /tmp/csakd-run; src=$(mktemp -d); ln -s "$(cd "$data" && pwd)"/aviris_*x*.npz "$src/"
      { python3 -m csakd synth --source "$src" --channels aviris172 --tile 64 --stride 16 --split-by region \
          --out /tmp/csakd-aviris --overwrite --no-progress &&
        python3 -m csakd train --data /tmp/csakd-aviris --mode online --device "${TRAIN_DEVICE:-cuda}" --backend "${TRAIN_BACKEND:-auto}" \
          --precision "${TRAIN_PRECISION:-bf16}" --crop 64 --batch-size 4 --max-steps "${TRAIN_STEPS:-3000}" --no-progress --out /tmp/csakd-run &&
        python3 -m csakd eval --checkpoint /tmp/csakd-run --data /tmp/csakd-aviris --baselines --device "${TRAIN_DEVICE:-cuda}" \
          --out "$OUT/eval_aviris"
      } >"$OUT/train.log" 2>&1; echo "train rc=$?" | tee -a "$OUT/session.log"
      cp /tmp/csakd-run/metrics.jsonl "$OUT/train_metrics.jsonl" 2>/dev/null
      tail -n 12 "$OUT/train.log" ;;
    *)
      echo "unknown stage $stage" >&2; exit 2 ;;
  esac
done
log done
