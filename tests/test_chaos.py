"""Faults at scale (issue #14): a suite of 40 tiny checkpointing trials on a local multi-node Ray cluster while a
seeded killer removes worker nodes and adds new ones. Afterwards every trial has finished exactly once (one ok
result.json), MLflow has exactly one finished child run per trial holding what its result.json holds, and every
result is bit-identical to a run of the same trials without faults: a trial restored from a checkpoint continues the
same random streams (the method's ``torch.Generator`` state, the loss records and the step counter are in the
checkpoint, and training runs on one CPU thread), so a checkpoint read into a different outcome would show as a
different number.

The cluster (``ray.cluster_utils.Cluster``) is this test's own: its own temp dir, no dashboard, the address file of
other Ray sessions untouched, shut down by the test. The driver is a ``harness run --address`` subprocess (as on a
real cluster's head); the killer is the test's main thread, because starting a Ray node installs signal handlers.
"""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml

from harness import tracking as tr
from harness.executors import run_inprocess
from harness.executors.ray_tune import EVENTS_KEY, DriverCallback
from harness.results import TrialResult
from harness.run import RunDir
from harness.suite import expand, parse_suite
from harness.trial import run_trial, trial_dir_for

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "suites" / "smoke.yaml"

TRIALS = 40  # 20 seeds of a 12-step and of an 80-step trial
SEEDS = 20
WORKERS = 3
SEED = 14  # the killer's choices: which node, when, when its replacement comes
MAX_KILLS, MIN_KILL_INTERVAL_S = 6, 4.0
AIM_S = 20.0  # how long an aimed turn waits for a trial past a checkpoint
NODE_START_S = 300  # how long a new node may take to register (seconds, not Ray's 30: the machine may be loaded)


def _chaos_suite(path: Path):
    """40 trials of the smallest method of the multi-node test: 20 seeds of 80 steps with a checkpoint every 10 (long
    enough to be killed between checkpoints) and 20 of 12 steps with a checkpoint every 4; every trial may be retried
    after each kill."""
    data = yaml.safe_load(SMOKE.read_text())
    data["name"] = "chaos"
    data["methods"] = [  # the long ones first (Tune starts trials in this order): the killer finds them early
        {"name": "cgan", "label": "cgan-long", "params": {"width": 8}, "budget": {"steps": 80, "checkpoint_every": 10}},
        {"name": "cgan", "params": {"width": 8}, "budget": {"steps": 12}},
    ]
    data["budget"].update(checkpoint_every=4, log_every=2)
    data["evaluation"] = {"samples_per_class": 16, "metrics": [], "grid_samples_per_class": 4}
    data["protocol"].update(seeds=list(range(SEEDS)), eval_images_per_class=10)
    data["resources"] = {"cpu": 1, "gpu": 0, "max_failures": MAX_KILLS + 2}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return parse_suite(data, str(path))


@pytest.fixture
def cluster(monkeypatch):
    """A head that runs no trial and three 1-CPU workers, in a temp dir of its own."""
    import ray._private.services
    import ray._private.utils
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    # a fresh raylet waits 30 s for its agents' port files and exits after that (node_manager.cc): on a loaded machine
    # a node added in the middle of the run takes longer; its processes read these from the environment
    monkeypatch.setenv("RAY_raylet_start_wait_time_s", str(NODE_START_S))
    monkeypatch.setenv("RAY_worker_register_timeout_seconds", str(NODE_START_S))
    # Cluster writes its address into the machine-wide /tmp/ray/ray_current_cluster (what `ray.init()` joins): keep
    # whatever other Ray session owns it
    monkeypatch.setattr(ray._private.utils, "write_ray_address", lambda *args, **kwargs: None)
    # a node's start waits a hard-coded 30 s for its raylet to register (ray/_private/node.py): on a loaded machine a
    # fresh raylet takes longer, so the lookups it polls wait up to NODE_START_S themselves
    get_node, wait_for_node = ray._private.services.get_node, ray._private.services.wait_for_node

    def patient_get_node(*args, **kwargs):
        deadline = time.monotonic() + NODE_START_S
        while True:
            try:
                return get_node(*args, **kwargs)
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    monkeypatch.setattr(ray._private.services, "get_node", patient_get_node)
    monkeypatch.setattr(ray._private.services, "wait_for_node",
                        lambda gcs, socket, timeout=30: wait_for_node(gcs, socket, max(timeout, NODE_START_S)))
    temp_dir = tempfile.mkdtemp(prefix="rc14-", dir="/tmp")  # short: Ray's socket paths live under it
    with socket.socket() as probe:  # not Ray's default 8265, which another Ray session on this machine may hold
        probe.bind(("127.0.0.1", 0))
        dashboard_port = probe.getsockname()[1]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "temp_dir": temp_dir,
                                                            "include_dashboard": False,
                                                            "dashboard_port": dashboard_port})
    try:
        for _ in range(WORKERS):
            cluster.add_node(num_cpus=1, temp_dir=temp_dir)
        cluster.wait_for_nodes(timeout=NODE_START_S)
        yield cluster, temp_dir
    finally:
        cluster.shutdown()  # only the processes this cluster started
        shutil.rmtree(temp_dir, ignore_errors=True)


def _working(run_dir: Path, finished: set[str]) -> dict[str, tuple[str, bool]]:
    """Node id → (trial id, past a checkpoint) of the unfinished trials, from each one's latest report to Tune (their
    per-trial progress files): a kill there interrupts that trial, and one past a checkpoint restores from it."""
    busy = {}
    for progress in (run_dir / "ray" / "tune").glob("*/result.json"):
        lines = progress.read_text().splitlines()
        try:
            last = json.loads(lines[-1]) if lines else {}
        except ValueError:  # being written
            continue
        if last.get("status") == "running" and last.get("harness_trial") not in finished:
            busy[last["node_id"]] = (last["harness_trial"], bool(last.get("checkpoint_dir_name")))
    return busy


def _finished(run_dir: Path) -> set[str]:
    done = set()
    for path in run_dir.glob("trials/*/result.json"):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if record.get("status") == "ok":
            done.add(record["trial_id"])
    return done


def _kill_and_replace(cluster, driver: subprocess.Popen, run_dir: Path, temp_dir: str) -> list[dict]:
    """The killer, bounded and seeded: while the run goes on, at most MAX_KILLS times, at least MIN_KILL_INTERVAL_S
    apart (plus a seeded pause) and paced by the run's progress (kill k waits for k/(MAX_KILLS + 1) of the trials to
    finish), it removes a worker node without warning, then adds a fresh one after a seeded pause. On a seeded two
    thirds of its turns it waits (up to AIM_S) for a node running a trial past a checkpoint and kills that one (the
    trial restores from its checkpoint elsewhere); on the others it kills a seeded choice among the nodes with an
    unfinished trial, whatever that trial is doing (starting, fitting before its first checkpoint, writing its
    result), or among all workers when none has one."""
    rng = random.Random(SEED)
    kills: list[dict] = []
    while driver.poll() is None and len(kills) < MAX_KILLS:
        time.sleep(MIN_KILL_INTERVAL_S + rng.uniform(0, 3))
        aim = rng.random() >= 1 / 3
        pick = rng.random()  # drawn every turn, so the sequence of choices does not depend on timing
        victim, trial, finished = None, None, _finished(run_dir)
        if len(finished) < len(kills) * TRIALS // (MAX_KILLS + 1):  # paced: the kills spread over the whole run
            continue
        deadline = time.monotonic() + (AIM_S if aim else 0)
        while driver.poll() is None and len(finished) < TRIALS - 2:
            alive = sorted(cluster.worker_nodes, key=lambda node: node.node_id)
            busy = _working(run_dir, finished)
            targets = [node for node in alive if node.node_id in busy and (busy[node.node_id][1] or not aim)]
            if targets or not aim:
                victim = (targets or alive)[int(pick * len(targets or alive))]
                trial = busy.get(victim.node_id, (None, False))
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
            finished = _finished(run_dir)
        if driver.poll() is not None or len(finished) >= TRIALS - 2:
            break
        if victim is None:
            continue
        cluster.remove_node(victim, allow_graceful=False)
        kills.append({"node": victim.node_id[:8], "trial": trial[0], "past_checkpoint": trial[1],
                      "finished_before": len(finished)})
        print(f"killed node {victim.node_id[:8]} (trial {trial[0]}{' past a checkpoint' if trial[1] else ''}; "
              f"{len(finished)} trials done)", flush=True)
        time.sleep(rng.uniform(0.5, 2.0))
        cluster.add_node(num_cpus=1, temp_dir=temp_dir)
    return kills


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_forty_trials_survive_random_node_kills_exactly_once_and_identical(tmp_path, cluster):
    cluster_obj, temp_dir = cluster
    suite_file = tmp_path / "chaos.yaml"
    suite = _chaos_suite(suite_file)
    specs = expand(suite)
    assert len(specs) == TRIALS and len({s.trial_id for s in specs}) == TRIALS
    run_dir = tmp_path / "run"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "NO_COLOR": "1",
           "COLUMNS": "200"}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [sys.executable, "-m", "harness.cli", "run", str(suite_file), "--address", cluster_obj.address,
               "--run-dir", str(run_dir), "--device", "cpu", "--no-progress"]
    started = time.monotonic()
    log = tmp_path / "driver.log"
    with log.open("w") as out:
        driver = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        try:
            kills = _kill_and_replace(cluster_obj, driver, run_dir, temp_dir)
            driver.wait(timeout=2400)
        finally:
            if driver.poll() is None:
                os.killpg(driver.pid, 9)
                driver.wait()
    chaos_s = time.monotonic() - started
    output = log.read_text()
    assert driver.returncode == 0, output[-5000:]
    assert kills, "no node was killed: the run ended before the killer's first turn"
    assert f"({TRIALS} ok, 0 failed)" in output

    # every trial finished exactly once: one result.json each, ok, in its own trial directory
    paths = sorted(run_dir.glob("trials/*/result.json"))
    assert sorted(p.parent for p in paths) == sorted(trial_dir_for(run_dir, s) for s in specs)
    results = {r.trial_id: r for r in (TrialResult.load(p) for p in paths)}
    assert all(r.status == "ok" for r in results.values())
    restored = sorted(r.name for r in results.values() if r.provenance.get("resumed"))
    nodes = {r.provenance["ray_node_id"] for r in results.values()}
    assert cluster_obj.head_node.node_id not in nodes  # trials ran on the workers
    for result in results.values():  # a restored trial logs each step once, up to the last
        steps = [record["step"] for record in result.losses]
        assert steps == sorted(set(steps)) and steps[-1] == result.spec["budget"]["steps"] - 1, result.name

    # MLflow (the driver's sqlite store in the run directory): one finished child run per trial, holding its result
    context = tr.run_dir_context(run_dir)
    client = tr.client_for(context.tracking_uri)
    grouped = tr.iter_children_by_trial(client, context)
    assert {k: len(v) for k, v in grouped.items()} == {s.trial_id: 1 for s in specs}
    attempts = {}
    for trial_id, [child] in grouped.items():
        result = results[trial_id]
        assert child.info.status == "FINISHED" and child.data.tags[tr.STATUS_TAG] == "ok", result.name
        for key, value in result.final_losses.items():
            assert child.data.metrics[f"final/{key}"] == value, result.name
        history = {(m.step, m.value) for m in client.get_metric_history(child.info.run_id, "loss_g")}
        assert history == {(r["step"], r["loss_g"]) for r in result.losses}, result.name  # no step with two values
        attempts[result.name] = int(child.data.tags["harness.attempts"])
    parent = client.get_run(context.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["harness.trials_ok"] == str(TRIALS)

    # the same trials without faults, in this process: the same numbers, bit for bit
    started = time.monotonic()
    reference_dir = tmp_path / "reference"
    RunDir.create(suite, suite_file, path=reference_dir)
    reference = {r.trial_id: r for r in run_inprocess(specs, reference_dir, device="cpu")}
    reference_s = time.monotonic() - started
    for spec in specs:
        chaotic, calm = results[spec.trial_id], reference[spec.trial_id]
        assert chaotic.losses == calm.losses, spec.name
        assert chaotic.final_losses == calm.final_losses, spec.name
        a = torch.load(trial_dir_for(run_dir, spec) / "samples.pt")
        b = torch.load(trial_dir_for(reference_dir, spec) / "samples.pt")
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["labels"], b["labels"]), spec.name

    retried = {name: n for name, n in attempts.items() if n > 1}
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"\nchaos: {len(kills)} node kills ({sum(k['trial'] is not None for k in kills)} during a trial, "
          f"{sum(k['past_checkpoint'] for k in kills)} of them past a checkpoint), "
          f"{len(restored)} trials restored from a checkpoint {restored}, retried trials (attempts) {retried}, "
          f"trials ran on {len(nodes)} nodes; chaos run {chaos_s:.0f} s, fault-free reference {reference_s:.0f} s; "
          f"CPU of reaped child processes {cpu.ru_utime + cpu.ru_stime:.0f} s")
    assert restored, f"no trial was restored from a checkpoint although {len(kills)} nodes were killed: {kills}"
    assert set(restored) <= set(retried)


# ------------------------------------------------------------------------------------------ regression, fast


class _Trial:
    """What the driver's Tune callback reads of a Tune trial."""

    def __init__(self, trial_id: str, spec, *, retries_left: bool = False, error: Exception | None = None) -> None:
        self.trial_id, self.config, self.last_result = trial_id, {"spec": spec.model_dump(mode="json")}, {}
        self.retries_left, self.error = retries_left, error

    def should_recover(self) -> bool:
        return self.retries_left

    def get_error(self) -> Exception | None:
        return self.error


class _Progress:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def started(self, name: str) -> None:
        self.events.append(("started", name))

    def finished(self, result) -> None:
        self.events.append(("finished", result.name))

    def lost(self, name: str, why: str) -> None:
        self.events.append(("lost", name))


def test_a_trial_whose_node_died_after_its_result_is_tracked_and_counted_once(tmp_path):
    """A trial writes result.json, then its node dies before its final report reaches Tune; Tune retries it, and the
    retry finds the result and reports it as reused. That trial started in this invocation, so the driver must
    finish its child run and count it (it used to skip it as "kept from an earlier invocation": the child run
    stayed RUNNING without final metrics and the progress never counted the trial). A trial really kept from an
    earlier invocation is still left alone."""
    suite = _chaos_suite(tmp_path / "chaos.yaml")
    run = RunDir.create(suite, tmp_path / "chaos.yaml", path=tmp_path / "run")
    context = tr.start_run_tracking(suite, tmp_path / "chaos.yaml", run.path, tr.default_tracking_uri(run.path),
                                    executor="ray")
    this, earlier = [spec for spec in expand(suite) if spec.label == "cgan"][:2]
    progress = _Progress()
    driver = DriverCallback(run.path, tracking=context, progress=progress, storage=None)

    trial = _Trial("t_this", this)
    result = run_trial(this, run.path, device="cpu")  # the worker's run_trial, before its node died
    start = [{"hook": "on_start", "provenance": {"method_config": result.provenance["method_config"]}}]
    driver.on_trial_result(0, [], trial, {EVENTS_KEY: json.dumps(start)})
    trial.last_result = {"status": "ok", "reused": 1, "harness_trial": this.trial_id}  # the retry's report
    driver.on_trial_complete(0, [], trial)

    kept = _Trial("t_earlier", earlier)
    run_trial(earlier, run.path, device="cpu")
    kept.last_result = {"status": "ok", "reused": 1, "harness_trial": earlier.trial_id}
    driver.on_trial_complete(0, [], kept)

    client = tr.client_for(context.tracking_uri)
    grouped = tr.iter_children_by_trial(client, context)
    [child] = grouped[this.trial_id]
    assert child.info.status == "FINISHED" and child.data.tags[tr.STATUS_TAG] == "ok"
    for key, value in result.final_losses.items():
        assert child.data.metrics[f"final/{key}"] == value
    assert earlier.trial_id not in grouped  # tracked by the invocation that ran it, not here
    assert progress.events == [("started", this.name), ("finished", this.name)]


def test_a_trial_tune_errors_with_retries_left_is_resumed_not_lost(tmp_path):
    """Found by the chaos test: a node died while a reused actor was being reset for trial seed37; both calls in
    flight failed, the first sent the trial back to PENDING for a retry, the second errored it (Ray 2.60), so the run
    ended with 39 of 40 trials and no retry used. The driver's callback now keeps such a trial (error reported while
    it still has retries) for ``_fit`` to resume, and ends it as lost only if no round is left; a trial errored past
    its retries ends at once, as before."""
    suite = _chaos_suite(tmp_path / "chaos.yaml")
    first, second = [spec for spec in expand(suite) if spec.label == "cgan"][:2]
    progress = _Progress()
    driver = DriverCallback(tmp_path / "run", tracking=None, progress=progress, storage=None)

    lost_with_node = _Trial("t1", first, retries_left=True, error=RuntimeError("the actor's node died"))
    driver.on_trial_error(0, [], lost_with_node)
    assert progress.events == []  # neither finished nor lost: it is to run again
    assert driver.take_errored_with_retries() == [first.name]
    assert driver.take_errored_with_retries() == []  # once per error

    past_retries = _Trial("t2", second, retries_left=False, error=RuntimeError("it kept crashing"))
    driver.on_trial_error(0, [], past_retries)
    driver.on_trial_error(0, [], lost_with_node)  # again, and this time no round is left
    driver.give_up_errored_with_retries()
    driver.finish_pending(wait_s=0)
    assert sorted(progress.events) == [("lost", first.name), ("lost", second.name)]


def test_a_retried_trial_keeps_the_losses_its_failed_attempt_logged(tmp_path):
    """Found by the chaos test: cgan-5shot-seed6, restored from its checkpoint after step 8, had only steps 8-11 in
    MLflow. The losses of steps 0-6 had reached the driver with the first attempt's reports, but waited in that
    attempt's tracker (losses are sent to MLflow every 500 values or 15 s), and the retried attempt's start replaced
    the tracker without sending them. Now every logged step is in MLflow once, with the value result.json has."""
    from harness.callbacks import TrialInfo

    suite = _chaos_suite(tmp_path / "chaos.yaml")
    run = RunDir.create(suite, tmp_path / "chaos.yaml", path=tmp_path / "run")
    context = tr.start_run_tracking(suite, tmp_path / "chaos.yaml", run.path, tr.default_tracking_uri(run.path),
                                    executor="ray")
    spec = next(spec for spec in expand(suite) if spec.label == "cgan")
    result = run_trial(spec, run.path, device="cpu")  # the numbers both attempts log
    info = TrialInfo(spec, trial_dir_for(run.path, spec), result.provenance)
    callback = tr.TrackingCallback(context)

    def log(records):
        for record in records:
            losses = {k: v for k, v in record.items() if isinstance(v, float)}
            callback.on_log(info, record["step"], losses, {})

    callback.on_start(info)
    log(result.losses[:4])  # steps 0-6, then the node dies
    callback.on_start(info)  # the retry, restored from the checkpoint after step 6
    log(result.losses[3:])
    callback.on_finish(info, result)

    client = tr.client_for(context.tracking_uri)
    [child] = tr.iter_children_by_trial(client, context)[spec.trial_id]
    history = {(m.step, m.value) for m in client.get_metric_history(child.info.run_id, "loss_g")}
    assert history == {(r["step"], r["loss_g"]) for r in result.losses}
    assert child.data.tags["harness.attempts"] == "2"
