#!/usr/bin/env bash
# Set up .venv with everything LiverTumorLRP needs (idempotent; run from anywhere).
#   torch 2.14.1 + torchvision 0.29.1 (torchvision only for zennit, the reference LRP implementation the tests
#   compare against), the library in editable mode, and the test extras (pytest, zennit, MONAI, slicer-core).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $($PY --version)" >&2
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch, torchvision" >/dev/null 2>&1; then
  echo "installing torch 2.14.1 and torchvision 0.29.1 (a few minutes)" >&2
  .venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
fi
if ! .venv/bin/python -c "import LiverTumorLRPLib, zennit, monai, SimpleITK, safetensors, slicer, trame_slicer, playwright" >/dev/null 2>&1 \
   || [ pyproject.toml -nt .venv/.installed ]; then
  echo "installing LiverTumorLRP and its test dependencies" >&2
  .venv/bin/python -m pip install -q -e ".[test]"
  touch .venv/.installed
fi
bash scripts/install_chromium.sh || echo "warning: chromium not installed; the web page tests (Testing/test_web.py) will skip" >&2
bash scripts/install_orthanc.sh || echo "warning: Orthanc not installed; the PACS tests (Testing/test_dicom.py) install it themselves or skip" >&2
