#!/usr/bin/env bash
# The main job on a bundled fixture: compress a trained model into an NNC bitstream within a
# 1-point accuracy budget, print the report, rebuild the model and time it against the original.
# Installs the ONNX Runtime library first (scripts/setup-ort.sh).
# Usage: scripts/demo.sh [MODEL.onnx [CALIB.npz]]   (default: the residual CNN fixture)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
model=${1:-fixtures/resnet.onnx}
calib=${2:-fixtures/mnist_test.npz}
out=target/demo
mkdir -p "$out"
name=$(basename "$model" .onnx)
bash scripts/setup-ort.sh >/dev/null
cargo build --release --locked -q
nnzip=./target/release/nnzip
echo "== nnzip inspect $model"
"$nnzip" inspect "$model" | head -8
echo
echo "== nnzip compress $model --calib $calib --max-drop 1"
"$nnzip" compress "$model" -o "$out/$name.nnc" --calib "$calib" --max-drop 1 --html "$out/$name.html"
echo
echo "== nnzip decompress $out/$name.nnc"
"$nnzip" decompress "$out/$name.nnc" -o "$out/$name.decompressed.onnx"
echo
# One intra-op thread: this model runs in ~0.1 ms, where a two-thread pool's wake-ups make the
# latency bimodal (0.10 or 0.17 ms) and the median ratio flip between runs.
echo "== nnzip bench $model --vs $out/$name.decompressed.onnx --threads 1"
"$nnzip" bench "$model" --vs "$out/$name.decompressed.onnx" --runs 200 --threads 1
echo
echo "report with plots: $out/$name.html"
