"""End to end on a real 3-master Redis Cluster (Debian's redis-server, loopback).

Two replay cameras whose hash tags land on different masters, two scheduler
worker processes, decoders, all through ``redis+cluster://``: every frame gets
exactly one record, metrics counters add up, nothing is CROSSSLOT.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest
from conftest import FRAME_COUNTS, STORE_GIF, ZONE_GIF, clip_path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from redis_cluster import LocalCluster  # noqa: E402

from pipeline.config import parse_config  # noqa: E402
from pipeline.keys import frames_key, results_key, status_key  # noqa: E402
from pipeline.redis_conn import connect, is_cluster  # noqa: E402

GIFS = {"aisle": STORE_GIF, "zone": ZONE_GIF}


@pytest.fixture(scope="module")
def cluster() -> LocalCluster:
    if not (os.access("/usr/bin/redis-server", os.X_OK) or shutil.which("redis-server")):
        pytest.fail("redis-server is not installed (the cluster nodes are Debian's redis-server): "
                    "`bash scripts/test.sh` installs it, or `apt-get install redis-server`", pytrace=False)
    with LocalCluster(masters=3) as c:
        yield c


def test_cluster_url_gives_cluster_client(cluster: LocalCluster) -> None:
    r = connect(cluster.url)
    assert is_cluster(r)
    assert connect(cluster.url.replace("redis+cluster://", "redis://") + "?cluster=1").ping()
    # Every key of one camera is in one slot; the two cameras are on different masters.
    for cam in GIFS:
        slots = {r.keyslot(k) for k in (frames_key(cam), results_key(cam), status_key(cam), f"camera:{{{cam}}}", f"metrics:{{{cam}}}")}
        assert len(slots) == 1
    nodes = {r.get_node_from_key(frames_key(cam)).port for cam in GIFS}
    assert len(nodes) == 2


def test_pipeline_end_to_end_on_cluster(cluster: LocalCluster) -> None:
    from pipeline.app.supervisor import Supervisor
    from pipeline.registry import prepare_camera

    cfg = parse_config({
        "defaults": {"models": ["mog2_motion", "scene_light", "edge_density"], "mode": "replay"},
        "cameras": {cam: {"source": str(clip_path(f))} for cam, f in GIFS.items()},
    })
    r = connect(cluster.url)
    for cam in GIFS:
        prepare_camera(r, cam, fresh=True)
    sup = Supervisor(cfg, cluster.url, workers=2, batch=4, claim_idle_ms=1000).start()
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < 90:
            sup.poll()
            if sup.decoders_done() and all(r.xlen(frames_key(c)) == 0 for c in GIFS):
                break
            time.sleep(0.1)
        elapsed = time.monotonic() - t0
        failed = [(c.name, c.history) for c in sup.children if any(code != 0 for code in c.history)]
    finally:
        sup.stop()
    assert not failed, f"children died: {failed}"
    for cam in GIFS:
        events = [json.loads(f[b"json"]) for _, f in r.xrange(status_key(cam))]
        eos = [e for e in events if e["event"] == "eos"]
        assert eos, events
        sent = int(eos[-1]["frames"])
        frames = [int(json.loads(f[b"json"])["frame"]) for _, f in r.xrange(results_key(cam))]
        workers = {json.loads(f[b"json"])["worker"] for _, f in r.xrange(results_key(cam))}
        print(f"\ncluster {cam}: sent={sent} records={len(frames)} unique={len(set(frames))} workers={len(workers)} in {elapsed:.1f}s")
        assert sent == FRAME_COUNTS[GIFS[cam]]  # the whole clip went through
        assert sorted(frames) == list(range(sent))
        assert int(r.hget(f"metrics:{{{cam}}}", "processed")) == sent
        assert int(r.hget(f"metrics:{{{cam}}}", "executed:scene_light")) == sent
