#!/usr/bin/env bash
# What the fleet tests (crates/nnzip-cli/tests/batch_s3.rs, batch_engines.rs) and the wheel check
# (scripts/test-wheel.sh) need from PyPI, in the venv .venv-fleet/: moto's S3-compatible server
# (started on loopback by the tests; boto3 and PyYAML come with it), dask.distributed
# (LocalCluster for the Dask driver) and maturin (builds the wheel). Pinned; idempotent. Prints
# the venv's python.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$root/.venv-fleet
PINS="moto[server]==5.2.5 distributed==2026.8.0 maturin==1.16.0"
if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/PINS" 2>/dev/null)" = "$PINS" ]; then
  echo "$venv/bin/python"; exit 0
fi
command -v python3 >/dev/null || { echo "setup-fleet: python3 is needed" >&2; exit 1; }
echo "setup-fleet: installing $PINS from PyPI into $venv ..." >&2
rm -rf "$venv"
python3 -m venv "$venv"
# shellcheck disable=SC2086
"$venv/bin/python" -m pip install -q --disable-pip-version-check $PINS >&2
echo "$PINS" > "$venv/PINS"
echo "$venv/bin/python"
