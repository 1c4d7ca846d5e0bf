#!/usr/bin/env bash
# Every check of funcreg that needs a GPU, as one run on a device machine lent to a
# session (CI has no GPU and never runs this). The machine's python3 has torch, pytest and
# hypothesis but no optree, and nothing can be fetched there, so a wheel travels with the
# checkout. Prepare it once, here, from the repository root:
#
#     echo /.device/ >> .git/info/exclude
#     pip download optree --no-deps --only-binary=:all: --python-version 3.12 \
#         --platform manylinux_2_28_x86_64 -d .device
#
# then run `bash benchmarks/gpu_check.sh` there with `.device` carried. The logs land in
# $OUT (the device tool brings them back); their figures go to benchmarks/RESULTS.md,
# section "GPU", with this command.
set -uo pipefail
out=${OUT:-/tmp/gpu_check}
mkdir -p "$out"
python3 -m pip install --quiet --no-index --no-deps --target .device/site .device/optree-*.whl
export PYTHONPATH=".:.device/site" PYTHONUNBUFFERED=1
status=0
python3 -c 'import torch, optree; print("torch", torch.__version__, "optree", optree.__version__,
    torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device")' \
    2>&1 | tee "$out/env.txt" || status=1
# the CUDA-marked tests: fused steps, donation and every family on the device
python3 -m pytest -m cuda -q -p no:cacheprovider 2>&1 | tee "$out/pytest_cuda.txt" || status=1
# donated AdamW and SGD against torch.optim fused: time and max_memory_allocated
python3 benchmarks/bench_donation.py --device cuda 2>&1 | tee "$out/bench_donation_cuda.txt" || status=1
exit $status
