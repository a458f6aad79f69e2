#!/usr/bin/env bash
# The one run for a GPU machine, in at most 8 minutes on an H200: benchmarks/gpu_check.py
# (400/200 and 2,000 images, resnet18/100 in float32/float16/bfloat16 against the bare backbone
# and anomalib, wide_resnet50_2/550, one 20,000-image fit), then the test suite with the shared
# settings on CUDA. Everything goes under $OUT (at most seven files); a short summary prints last.
#
# From the repository root, with anomalib and its import-time needs as wheels in .whl/
# (made here with `bash ../shared/tools/gpu-wheels.sh .whl`; without them anomalib's rows and
# tests say it is missing):
#
#   OUT=/tmp/gpu-run bash benchmarks/gpu_run.sh
#
# Time limits: the benchmark 270 s, the suite 210 s (8 workers where pytest-xdist is there;
# interrupted, pytest still prints what ran), the installs and the summary a few seconds.
set -u
OUT=${OUT:-$PWD/gpu-run}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
python=${PYTHON:-python3}
site=/tmp/skpadim-site
if compgen -G ".whl/*.whl" >/dev/null; then
  $python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl \
    >"$OUT/setup.log" 2>&1 || echo "the wheels in .whl did not install (see setup.log)" >&2
  export PYTHONPATH="$site"
fi
# This checkout first (not benchmarks/: its distributed.py would hide Dask's package of that name),
# and a `skpadim` command for the command-line tests (the checkout is not pip-installed there).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p /tmp/skpadim-bin
printf '#!/bin/sh\nexec %s -m skpadim "$@"\n' "$(command -v $python)" >/tmp/skpadim-bin/skpadim
chmod +x /tmp/skpadim-bin/skpadim
export PATH="/tmp/skpadim-bin:$PATH"
{
  date -u
  nvidia-smi 2>&1
  $python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda); \
print(torch.cuda.get_device_name(0), 'free, total bytes:', torch.cuda.mem_get_info(0))" 2>&1
  lscpu 2>&1 | grep -E "Model name|^CPU\(s\)|Flags" | cut -c1-400
  free -g 2>&1
} >"$OUT/machine.txt"

# 1. The benchmark: markdown tables as they are measured, the numbers in JSON at the end
# (SKIP_BENCHMARK=1: the suite alone).
bench=skipped
if [ "${SKIP_BENCHMARK:-0}" != 1 ]; then
  timeout -s INT 270 $python benchmarks/gpu_check.py --json "$OUT/gpu_check.json" \
    >"$OUT/gpu_check.md" 2>"$OUT/gpu_check.log"
  bench=$?
fi

# 2. The suite on CUDA. Left out: what needs packages this machine lacks (dask, openvino,
# the efficientnet extra, and hypothesis where it is missing), the real data set, which
# does not travel, and what needs the package index or a browser (the torch-free virtual
# environment is built from PyPI; the HTML report is rendered in chromium).
parallel=""
if $python -c "import xdist" 2>/dev/null; then parallel="-n 8"; export OMP_NUM_THREADS=2; fi
per_test=""
if $python -c "import pytest_timeout" 2>/dev/null; then per_test="--timeout 150"; fi
missing=""  # test files that import a package this machine lacks at collection
if ! $python -c "import hypothesis" 2>/dev/null; then
  missing="--ignore=tests/test_inputs.py --ignore=tests/test_metrics.py"
  echo "hypothesis is missing: tests/test_inputs.py and tests/test_metrics.py left out" >>"$OUT/machine.txt"
fi
SKPADIM_TEST_DEVICE=cuda SKPADIM_SKIP_REALDATA=1 SKPADIM_SKIP_VENV=1 timeout -s INT 210 \
  $python -m pytest -q -p no:cacheprovider $parallel $per_test $missing \
  --ignore=tests/test_distributed.py --ignore=skpadim/distributed \
  --deselect tests/test_cli.py::test_evaluate_prints_metrics_and_writes_a_report_that_renders \
  -m "not dask and not openvino and not efficientnet and not realdata" >"$OUT/tests.txt" 2>&1
suite=$?

# 3. The summary: the throughput, wide and large-fit tables, and the suite's outcome.
{
  echo "gpu_check.py exit status $bench (124/130: stopped at its time limit), pytest exit status $suite"
  grep "left out" "$OUT/machine.txt"
  echo
  [ -f "$OUT/gpu_check.md" ] && awk '/^### (Speed|Throughput|Batch size|wide_resnet50_2|One fit)/{on=1} /^### (Metrics|Parity)/{on=0} on' \
    "$OUT/gpu_check.md" | grep -v "^$" | cut -c1-170
  echo
  grep -E "^(FAILED|ERROR) " "$OUT/tests.txt" | cut -c1-160 | head -40
  tail -n 1 "$OUT/tests.txt"
} | tee "$OUT/summary.txt"
