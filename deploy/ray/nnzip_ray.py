#!/usr/bin/env python3
"""A fleet on Ray: one task per shard (`nnzip batch run --shard I/N`), then the report.

    python nnzip_ray.py fleet.jsonl s3://bucket/out --shards 8 --address ray://head:10001
    python nnzip_ray.py fleet.jsonl out/ --shards 4 --num-cpus 2     # a local Ray

Each node needs the nnzip command (``pip install nnzip``, or ``--nnzip PATH``) and the storage
credentials. A shard that exits 75 raises ``Transient``, which Ray retries (``max_retries``,
``retry_exceptions``); exit 3 (some items failed, recorded) is a result. The report is rebuilt
from the per-item records by id. Prints one JSON document: the shards and the report.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


class Transient(Exception):
    """A shard ended with exit 75: retrying is safe."""


def run_shard(nnzip: str, manifest: str, out: str, index: int, count: int, jobs: int) -> dict:
    t0 = time.time()
    p = subprocess.run(
        [nnzip, "batch", "run", manifest, "--out", out, "--shard", f"{index}/{count}",
         "--jobs", str(jobs), "--log-format", "json"],
        capture_output=True, text=True, check=False)
    if p.returncode == 75:
        raise Transient(f"shard {index}/{count}: {p.stderr.strip()}")
    events = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    return {"shard": index, "code": p.returncode, "events": events,
            "seconds": time.time() - t0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("manifest")
    ap.add_argument("out")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--nnzip", default="nnzip")
    ap.add_argument("--address", help="a running Ray cluster (default: start a local one)")
    ap.add_argument("--num-cpus", type=int, help="CPUs of a local Ray")
    ap.add_argument("--cpus-per-shard", type=float, default=1.0)
    ap.add_argument("--retries", type=int, default=3)
    a = ap.parse_args(argv)

    import ray

    ray.init(address=a.address, num_cpus=None if a.address else a.num_cpus,
             include_dashboard=False, log_to_driver=False)
    task = ray.remote(num_cpus=a.cpus_per_shard, max_retries=a.retries,
                      retry_exceptions=[Transient])(run_shard)
    t0 = time.time()
    shards = ray.get([task.remote(a.nnzip, a.manifest, a.out, i, a.shards, a.jobs)
                      for i in range(a.shards)])
    seconds = time.time() - t0
    ray.shutdown()
    p = subprocess.run([a.nnzip, "batch", "report", a.out, "--json"],
                       capture_output=True, text=True, check=True)
    json.dump({"shards": shards, "seconds": seconds, "report": json.loads(p.stdout)}, sys.stdout)
    sys.stdout.write("\n")
    codes = {r["code"] for r in shards}
    return 3 if 3 in codes else max(codes, default=0)


if __name__ == "__main__":
    sys.exit(main())
