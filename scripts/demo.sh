#!/usr/bin/env bash
# The main job on a bundled fixture: what the model holds, and what it costs on ONNX Runtime.
# Installs the ONNX Runtime library first (scripts/setup-ort.sh). Usage: scripts/demo.sh [MODEL]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
model=${1:-fixtures/resnet.onnx}
bash scripts/setup-ort.sh >/dev/null
cargo build --release --locked -q
echo "== nnzip inspect $model"
./target/release/nnzip inspect "$model"
echo
echo "== nnzip bench $model --vs $model (same model twice: the ratio shows the measurement noise)"
./target/release/nnzip bench "$model" --vs "$model" --runs 200
