#!/usr/bin/env python3
"""A fleet on Dask: one task per shard (`nnzip batch run --shard I/N`), then the report.

    python nnzip_dask.py fleet.jsonl s3://bucket/out --shards 8 --scheduler tcp://host:8786
    python nnzip_dask.py fleet.jsonl out/ --shards 4 --local-workers 2   # a LocalCluster

Each worker needs the nnzip command (``pip install nnzip``, or ``--nnzip PATH``) and the
storage credentials in its environment. A shard that exits 75 (transient storage failure)
raises ``Transient``, which Dask retries (``--retries``); exit 3 (some items failed, recorded)
is a result, not an error. The report is rebuilt from the per-item records by id, so retried
tasks cannot duplicate rows. Prints one JSON document: the shards' exit codes and the report.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys


class Transient(Exception):
    """A shard ended with exit 75: retrying is safe."""


def run_shard(nnzip: str, manifest: str, out: str, index: int, count: int, jobs: int) -> dict:
    """Runs one shard; returns its exit code and its JSON events."""
    p = subprocess.run(
        [nnzip, "batch", "run", manifest, "--out", out, "--shard", f"{index}/{count}",
         "--jobs", str(jobs), "--log-format", "json"],
        capture_output=True, text=True, check=False)
    if p.returncode == 75:
        raise Transient(f"shard {index}/{count}: {p.stderr.strip()}")
    events = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    try:
        from dask.distributed import get_worker
        worker = get_worker().address
    except (ImportError, ValueError):
        worker = None
    return {"shard": index, "code": p.returncode, "events": events, "worker": worker,
            "stderr": p.stderr[-2000:]}


def report(nnzip: str, out: str) -> dict:
    p = subprocess.run([nnzip, "batch", "report", out, "--json"],
                       capture_output=True, text=True, check=True)
    return json.loads(p.stdout)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("manifest")
    ap.add_argument("out")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--jobs", type=int, default=1, help="items at once per shard")
    ap.add_argument("--nnzip", default="nnzip", help="the nnzip command on the workers")
    ap.add_argument("--scheduler", help="address of a running scheduler")
    ap.add_argument("--local-workers", type=int, default=2,
                    help="worker processes of a LocalCluster when no --scheduler is given")
    ap.add_argument("--retries", type=int, default=3)
    a = ap.parse_args(argv)

    from dask.distributed import Client, LocalCluster

    if a.scheduler:
        client = Client(a.scheduler)
        cluster = None
    else:
        cluster = LocalCluster(n_workers=a.local_workers, threads_per_worker=1,
                               processes=True, dashboard_address=None)
        client = Client(cluster)
    try:
        futures = [client.submit(run_shard, a.nnzip, a.manifest, a.out, i, a.shards, a.jobs,
                                 key=f"nnzip-shard-{i}-of-{a.shards}", retries=a.retries,
                                 pure=False)
                   for i in range(a.shards)]
        shards = client.gather(futures)
        workers = sorted({w for r in shards for w in [r.get("worker")] if w})
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    result = {
        "shards": [{"shard": r["shard"], "code": r["code"], "events": r["events"]} for r in shards],
        "workers": workers,
        "report": report(a.nnzip, a.out),
    }
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    codes = {r["code"] for r in shards}
    return 3 if 3 in codes else max(codes, default=0)


if __name__ == "__main__":
    sys.exit(main())
