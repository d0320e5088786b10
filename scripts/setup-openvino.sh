#!/usr/bin/env bash
# The OpenVINO build of ONNX Runtime for the placement test (tests/devices.rs): the PyPI wheel
# onnxruntime-openvino, installed without dependencies into the venv .venv-openvino/ (only its
# shared libraries are used: libonnxruntime.so with libonnxruntime_providers_openvino.so and the
# OpenVINO runtime beside it). Idempotent. Prints the library's path.
set -euo pipefail
VERSION=${ORT_OPENVINO_VERSION:-1.24.1}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$root/.venv-openvino
find_lib() { find "$venv" -path '*/onnxruntime/capi/libonnxruntime.so.*' 2>/dev/null | head -n1 || true; }
lib=$(find_lib)
if [ -n "$lib" ] && [ "$(cat "$venv/VERSION" 2>/dev/null)" = "$VERSION" ]; then
  echo "$lib"; exit 0
fi
command -v python3 >/dev/null || { echo "setup-openvino: python3 is needed" >&2; exit 1; }
echo "setup-openvino: installing onnxruntime-openvino==$VERSION from PyPI into $venv ..." >&2
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps --only-binary=:all: \
  "onnxruntime-openvino==$VERSION" >&2
echo "$VERSION" > "$venv/VERSION"
lib=$(find_lib)
[ -n "$lib" ] || { echo "setup-openvino: no libonnxruntime.so in the wheel" >&2; exit 1; }
echo "$lib"
