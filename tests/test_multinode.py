"""Multi-node on one machine (ray.cluster_utils.Cluster): trials run on worker nodes, and a trial whose node dies
restarts from its last checkpoint on another node; the suite completes with every trial once."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import yaml

from harness.executors import run_ray
from harness.suite import expand, parse_suite

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cluster(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # the head runs no trial
    # two trials on three 1-CPU workers: the third takes the retry of the trial whose node is killed (nodes cannot be
    # added from the killer thread: Ray's node start installs signal handlers, main thread only)
    workers = [cluster.add_node(num_cpus=1) for _ in range(3)]
    cluster.wait_for_nodes()
    yield cluster, workers
    cluster.shutdown()  # only the processes this cluster started


def _suite(steps: int):
    data = yaml.safe_load((ROOT / "suites" / "smoke.yaml").read_text())
    data["methods"] = [{"name": "cgan", "params": {"width": 8}, "budget": {"steps": steps}}]
    data["evaluation"]["metrics"] = []
    data["budget"]["checkpoint_every"] = 50
    data["resources"]["max_failures"] = 2
    data["protocol"]["seeds"] = [0, 1]
    return parse_suite(data, "multinode.yaml")


def test_trials_land_on_worker_nodes_and_survive_a_node_failure(tmp_path, cluster):
    import ray

    cluster_obj, workers = cluster
    worker_ids = {w.node_id for w in workers}
    specs = expand(_suite(steps=1500))
    killed: dict[str, str] = {}

    def kill_a_busy_worker() -> None:
        """Once a trial has reported a checkpoint, remove the node it runs on."""
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            for progress in (tmp_path / "ray" / "tune").glob("*/result.json"):
                for line in progress.read_text().splitlines():
                    record = json.loads(line)
                    if record.get("status") == "running" and record.get("step", -1) >= 90:
                        node = next(w for w in workers if w.node_id == record["node_id"])
                        killed.update(node=node.node_id, trial=record["harness_trial"])
                        cluster_obj.remove_node(node, allow_graceful=False)
                        return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_a_busy_worker, daemon=True)
    killer.start()
    results = run_ray(specs, tmp_path, address=cluster_obj.address, device="cpu", max_failures=2, verbose=0)
    killer.join(timeout=5)
    assert ray.is_initialized() is False  # run_ray shut down the connection it opened
    assert killed, "no trial reached a checkpoint before the deadline"

    assert sorted(r.trial_id for r in results) == sorted(s.trial_id for s in specs)  # every trial once
    assert all(r.status == "ok" for r in results)
    nodes = {r.provenance["ray_node_id"] for r in results}
    assert nodes and cluster_obj.head_node.node_id not in nodes  # trials ran on workers, not the 0-CPU head
    assert killed["node"] in worker_ids
    restarted = next(r for r in results if r.trial_id == killed["trial"])
    assert restarted.provenance.get("resumed") is True  # continued from its checkpoint
    assert restarted.provenance["ray_node_id"] != killed["node"]
    steps = [r["step"] for r in restarted.losses]
    assert steps == sorted(set(steps)) and steps[-1] == 1499
