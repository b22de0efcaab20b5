#!/usr/bin/env bash
# The GPU checks, as one script for a machine with a CUDA device (run from the repository root):
#
#   OUT=runs/gpu-check TEST_WORKERS=8 bash benchmarks/gpu_check.sh
#
# 1. what the machine has (GPU, torch, MPI library);
# 2. tests/test_gpu.py (a client's numbers on CUDA do not depend on its group);
# 3. the speed benchmarks on cuda: one batched training round (group_speed), conv against MLP (conv_speed);
# 4. the default scenario on cuda: mpiexec -n 3, mpiexec -n 5 and the serial runtime; their logs must be
#    bitwise equal (tests/conftest.py's differing_datasets), and each prints its summary and wall time;
# 5. the whole test suite with runtime.device=auto, i.e. on the GPU wherever a test leaves the device alone.
# Every step has its own timeout; a step that fails or times out is reported and the script goes on.
set -u
OUT=${OUT:-runs/gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-python3}
MPIEXEC=${MPIEXEC:-$(dirname "$(command -v "$PY")")/mpiexec}
SUITE_TIMEOUT=${SUITE_TIMEOUT:-300}
TEST_WORKERS=${TEST_WORKERS:-8}
step() { echo; echo "== [$(date +%T)] $*"; }

step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
$PY - <<'EOF'
import torch, mpi4py
from mpi4py import MPI
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NO CUDA")
print("mpi4py", mpi4py.__version__, MPI.Get_library_version().splitlines()[0])
EOF

# The suite runs in the background from the start: it takes longest, and the steps below use the
# GPU lightly (its timings are then an upper bound, said in the output).
step "test suite on runtime.device=auto, $TEST_WORKERS workers, in the background"
( timeout "$SUITE_TIMEOUT" $PY -m pytest -v -n "$TEST_WORKERS" -p no:cacheprovider --durations=15 \
      --junitxml="$OUT/suite.xml" tests > "$OUT/suite.txt" 2>&1; echo "suite exit $?" >> "$OUT/suite.txt" ) &
SUITE=$!

step "tests/test_gpu.py"
timeout 120 $PY -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -5

step "benchmarks on cuda (the suite shares the GPU and CPUs meanwhile)"
timeout 60 $PY benchmarks/conv_speed.py --device cuda 2>&1 | tail -8
timeout 90 $PY benchmarks/group_speed.py --device cuda --clients 8,32,128 2>&1 | tail -20

step "default scenario on cuda: 3 ranks, 5 ranks and serial, side by side (wall times are upper bounds)"
run_default() {
    local launch=$1; shift
    local start=$(date +%s)
    timeout "${RUN_TIMEOUT:-200}" "$@" run --set runtime.device=cuda --out "$OUT/default-$launch.h5" --overwrite \
        > "$OUT/default-$launch.txt" 2>&1
    echo "$launch: exit $?, $(( $(date +%s) - start )) s" >> "$OUT/default-$launch.txt"
}
run_default n3 "$MPIEXEC" -n 3 $PY -m mpi4py -m fedgmi_mpi & RUNS=($!)
run_default n5 "$MPIEXEC" -n 5 $PY -m mpi4py -m fedgmi_mpi & RUNS+=($!)
run_default serial $PY -m fedgmi_mpi & RUNS+=($!)
wait "${RUNS[@]}"
for launch in n3 n5 serial; do echo "-- $launch"; tail -6 "$OUT/default-$launch.txt"; done
$PY - "$OUT" <<'EOF'
import sys
from pathlib import Path
sys.path.insert(0, "tests")
from conftest import differing_datasets
out = Path(sys.argv[1])
for other in ("default-n5.h5", "default-serial.h5"):
    if (out / "default-n3.h5").exists() and (out / other).exists():
        differ = differing_datasets(out / "default-n3.h5", out / other)
        print(f"default-n3.h5 vs {other}:", "bitwise equal" if not differ else f"DIFFER in {differ}")
EOF
rm -f "$OUT"/default-n5.h5 "$OUT"/default-serial.h5 "$OUT"/default-*.txt  # at most 8 files come back

step "waiting for the suite"
wait $SUITE
grep -E "^(FAILED|ERROR)|[0-9]+ (passed|failed)|suite exit" "$OUT/suite.txt" | tail -60
grep -A16 "slowest" "$OUT/suite.txt"
