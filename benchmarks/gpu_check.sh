#!/usr/bin/env bash
# The first-GPU check in one command (see benchmarks/gpu_check.py): throughput per method in fp32/bf16, eager and
# compiled, peak memory, MFU, and the kNN of a short fp32 vs bf16 run; under 10 minutes. Output also goes to
# gpu_check-<host>-<time>.log in the current folder. Extra arguments are passed on (e.g. --methods simclr,dino).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python}"
if [[ -x "$here/../.venv/bin/python" && -z "${PYTHON:-}" ]]; then python="$here/../.venv/bin/python"; fi
log="gpu_check-$(hostname)-$(date -u +%Y%m%dT%H%M%SZ).log"
"$python" "$here/gpu_check.py" "$@" 2>&1 | tee "$log"
exit "${PIPESTATUS[0]}"
