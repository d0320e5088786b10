#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what the tests load or start, then cargo
# test over the workspace:
# - the ONNX Runtime library (scripts/setup-ort.sh, from the onnxruntime PyPI wheel);
# - OpenSSH's server and client (Debian packages; crates/nnzip-cli/tests/devices.rs starts its own sshd on
#   loopback with throwaway keys, the system's sshd service is not used);
# - the OpenVINO build of ONNX Runtime (scripts/setup-openvino.sh, PyPI) for the placement test;
# - headless Chromium (Debian packages chromium and chromium-driver): crates/nnzip-cli/tests/report.rs
#   renders the HTML reports in it and saves screenshots under target/report-screenshots/;
# - moto's S3 server, dask.distributed and PyYAML in .venv-fleet/ (scripts/setup-fleet.sh, PyPI) for
#   the fleet tests (batch_s3.rs starts moto on loopback itself; batch_engines.rs runs the Dask
#   driver on a LocalCluster).
# scripts/test-wheel.sh builds the Python wheel (maturin, dev profile: it links the binary the
# tests built), installs it into a fresh venv with its onnxruntime dependency and runs it.
# The object-storage test needs the cargo feature `s3`, whose HTTP/TLS stack is a long cold
# build: only that one test binary is built with it, after the workspace tests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup-ort.sh >/dev/null
if ! [ -x /usr/sbin/sshd ] || ! command -v ssh >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test.sh: installing openssh-server and openssh-client (Debian) ..." >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      openssh-server openssh-client >&2
  else
    echo "test.sh: crates/nnzip-cli/tests/devices.rs needs /usr/sbin/sshd and ssh (Debian: openssh-server)" >&2
  fi
fi
if ! [ -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test.sh: installing chromium and chromium-driver (Debian) ..." >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      chromium chromium-driver >&2
  else
    echo "test.sh: crates/nnzip-cli/tests/report.rs needs /usr/bin/chromium (Debian: chromium)" >&2
  fi
fi
bash scripts/setup-openvino.sh >/dev/null
bash scripts/setup-fleet.sh >/dev/null
cargo test --workspace --locked "$@"
bash scripts/test-wheel.sh
cargo test -p nnzip-cli --features s3 --test batch_s3 --locked "$@"
