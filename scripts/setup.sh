#!/usr/bin/env bash
# One-step set-up for a fresh machine: system data (where apt is usable), a virtualenv in .venv with
# the pinned torch build, and this package with its dev extras (widgets, streaming, SLURM via submitit, TensorBoard
# and MLflow tracking), all under constraints.txt; the Jupyter kernel "ssl-workbench". Safe to re-run: it skips what is done.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${WORKBENCH_VENV:-.venv}"
PY="${PYTHON:-python3}"

# 1. Debian packages: the real Fashion-MNIST and Chromium (browser test, PNG export). Optional.
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  need=()
  [ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  if [ ${#need[@]} -gt 0 ]; then
    echo "setup: apt-get install ${need[*]}"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null; } \
      || echo "setup: warning: apt-get could not install ${need[*]}; tests that need them will be skipped"
  fi
else
  echo "setup: apt-get not usable here (not root or not Debian); Fashion-MNIST/Chromium tests may be skipped"
fi

# 2. Virtualenv with the pinned torch (pip takes it from this machine's disk), then the project.
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
stamp="$VENV/.ssl-workbench-installed"
want="$(cat pyproject.toml constraints.txt setup.py | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1 2> >(grep -v "is ignored: it is neither" >&2)
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev]" 2> >(grep -v "is ignored: it is neither" >&2)
  echo "$want" > "$stamp"
fi
# 3. The Jupyter kernel "ssl-workbench" (this venv's Python): in the venv, where papermill and `workbench lab` look
#    first, and for this user, so a shared JupyterLab can run the notebooks with it too.
"$VENV/bin/python" -m ipykernel install --prefix "$VENV" --name ssl-workbench --display-name "SSL Workbench" >/dev/null
"$VENV/bin/python" -m ipykernel install --user --name ssl-workbench --display-name "SSL Workbench ($(pwd))" >/dev/null \
  || echo "setup: warning: could not install the ssl-workbench kernel for this user (the venv's own is installed)"
echo "setup: ready ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
