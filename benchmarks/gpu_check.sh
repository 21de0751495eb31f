#!/usr/bin/env bash
# The prepared GPU check of issue 5: one command for a session that has an H100 lent.
#
#   device run:  bash benchmarks/gpu_check.sh          (timeout_s 540; about 6-7 minutes)
#
# 1. the CUDA tests (bf16 + channels_last fast path, CPU/GPU agreement, pinned prefetch,
#    augmentations on the GPU) and a real `torchrun --nproc_per_node 2` launch of
#    mocoxr.torchrun_pretrain (gloo, CPU processes);
# 2. the benchmark at the paper's resolution: ResNet18 (batch 256) and DenseNet121 (batch 128)
#    at 320 px, fast path vs the MoCo-CXR reference loop, the two data paths alone, feature
#    extraction (channels-last and NCHW), probe sweep, matrix FLOPs per image and TFLOP/s;
# 3. the fast path of ResNet18 compiled with inductor (torch.compile);
# 4. torch.profiler over 5 steady-state steps of the ResNet18 fast path: the phases' device
#    time (wait for batch, augment, forward, backward, optimizer) and the top CUDA kernels.
# Logs, JSON and the profile tables go to $OUT (the device tool's output folder) or
# runs/gpu_check; copy the figures into benchmarks/README.md with the date and the device line
# the log starts with.
# Uses .venv/bin/python when present, else python3 (the device image's PyTorch).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec > >(tee "$OUT/gpu_check.log") 2>&1
tee_pid=$!
status=0
step() { echo; echo "=== $1  ($(date -u +%H:%M:%S))"; }

step "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || status=1
$PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
nproc; uptime

step "1. CUDA tests + real torchrun (expect ~1-2 min)"
MOCOXR_TORCHRUN_TEST=1 timeout 240 $PY -m pytest -q -p no:cacheprovider -rs \
    tests/test_pretrain.py tests/test_augment.py \
    "tests/test_distributed.py::test_real_torchrun_resumes_a_one_process_run_on_two_processes" \
    "tests/test_distributed.py::test_two_process_step_matches_the_per_rank_bn_reference" \
    || status=1

step "2. benchmark, preset h100 (expect ~2-3 min)"
timeout 330 $PY benchmarks/bench_pretrain.py --preset h100 --work /tmp/mocoxr_bench \
    --json "$OUT/bench_h100.json" || status=1

step "3. fast path compiled (inductor), ResNet18 (expect ~1-2 min)"
timeout 240 $PY benchmarks/bench_pretrain.py --preset h100 --backbones resnet18 --compile \
    --skip-reference --skip-loaders --skip-features --skip-probe --work /tmp/mocoxr_bench \
    --json "$OUT/bench_h100_compile.json" || status=1

step "4. where a step's time goes: torch.profiler, ResNet18 b256 at 320 px (expect < 1 min)"
timeout 150 $PY benchmarks/profile_step.py --device cuda --backbone resnet18 --size 320 \
    --batch 256 --warmup 10 --steps 5 --patients 500 --queue 24576 --workers 16 \
    --work /tmp/mocoxr_bench --out "$OUT" || status=1

step "done, status $status"
exec 1>&- 2>&-
wait "$tee_pid" 2>/dev/null
exit $status
