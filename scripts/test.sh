#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs the ONNX Runtime library the tests load
# (scripts/setup-ort.sh, from the onnxruntime PyPI wheel), then cargo test over the workspace.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup-ort.sh >/dev/null
cargo test --workspace --locked "$@"
