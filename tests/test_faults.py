"""Faults the harness must ride out without losing or duplicating anything (issue #14):

* the MLflow tracking server dies in the middle of a trial and comes back: the driver keeps its writes (in memory and
  in a spool file in the run directory), writes them when the server answers again, reports what it could not write
  with the command that writes it, and a later invocation writes it too; one child run per trial throughout;
* shared storage (``file://``) goes away for a while: operations are retried with backoff and succeed when it is
  back; past the limit a clear error names the URI and the operation, and the local results are untouched.

The server is a real ``mlflow server`` subprocess on a free 127.0.0.1 port with a sqlite store in the test's
directory; it is killed (SIGKILL, its process group) and restarted on the same port and the same database.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from harness import tracking as tr
from harness.callbacks import TrialCallback
from harness.run import RunDir
from harness.storage import RunStorage, StorageUnavailable
from harness.suite import expand, parse_suite
from harness.tracking import outbox
from harness.tracking.params import SPLIT_PARAMS, _param_value, flatten
from harness.trial import run_trial, trial_dir_for

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "suites" / "smoke.yaml"

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------------ MLflow server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """SIGTERM the server when the thread that started it dies (PR_SET_PDEATHSIG: start it from the main thread)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except OSError:
        pass


class MlflowServer:
    """A real tracking server this test starts, kills (SIGKILL: it dies, it is not shut down) and restarts on the same
    port and sqlite file."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def start(self, timeout: float = 300) -> None:
        log = self.root / f"server-{self.starts}.log"
        command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                   f"sqlite:///{self.root / 'mlflow.db'}", "--artifacts-destination",
                   (self.root / "artifacts").as_uri(), "--host", "127.0.0.1", "--port", str(self.port),
                   "--workers", "1"]
        with log.open("w") as out:
            self.process = subprocess.Popen(
                command, cwd=self.root, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        self.starts += 1
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"mlflow server did not answer within {timeout} s:\n{log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the server's process group (it and its uvicorn worker; nothing else) and wait for the port to
        refuse connections."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)
        self.process = None
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                time.sleep(0.2)
            except OSError:
                return


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "server"
    root.mkdir()
    server = MlflowServer(root)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(autouse=True)
def _fresh_outboxes(monkeypatch):
    """Each test is its own driver process as far as kept writes go; short backoff, so a server that is back is
    noticed within a second rather than up to 30 s later."""
    monkeypatch.setattr(outbox, "_OUTBOXES", {})
    monkeypatch.setattr(outbox, "MAX_RETRY_S", 1.0)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _suite(tmp_path: Path, seeds: int, steps: int = 24):
    data = yaml.safe_load(SMOKE.read_text())
    data["methods"] = [{"name": "cgan", "params": {"width": 8}, "budget": {"steps": steps}}]
    data["budget"]["log_every"] = 2
    data["evaluation"] = {"samples_per_class": 16, "metrics": [], "grid_samples_per_class": 4}
    data["protocol"]["seeds"] = list(range(seeds))
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return parse_suite(data, str(path)), path


class ServerChaos(TrialCallback):
    """Kills or restarts the server at given (seed, step) points of the trials' loss logging: mid-trial, in the main
    thread (the driver's own), deterministically."""

    def __init__(self, server: MlflowServer, plan: dict[tuple[int, int], str]) -> None:
        self.server, self.plan, self.done = server, dict(plan), []

    def on_log(self, trial, step, losses, info) -> None:
        action = self.plan.pop((trial.spec.seed, step), None)
        if action == "kill":
            self.server.kill()
        elif action == "start":
            self.server.start()
        if action:
            self.done.append((action, trial.spec.seed, step, time.monotonic()))


def _check_child_runs(client, context: tr.TrackingContext, run_dir: Path, specs) -> None:
    """Exactly one child run per trial, finished, with everything its result.json holds: every logged loss at its
    step (none missing, none extra, none with another value), the final losses, the wall times, the params (spec,
    resolved method config, split), one sample image, the artifacts; the start counted once."""
    grouped = tr.iter_children_by_trial(client, context)
    assert sorted(grouped) == sorted(s.trial_id for s in specs)
    assert {k: len(v) for k, v in grouped.items()} == {s.trial_id: 1 for s in specs}
    for spec in specs:
        [run] = grouped[spec.trial_id]
        local = json.loads((trial_dir_for(run_dir, spec) / "result.json").read_text())
        assert local["status"] == "ok"
        assert run.info.status == "FINISHED" and run.data.tags[tr.STATUS_TAG] == "ok", spec.name
        assert run.data.tags["harness.attempts"] == "1", spec.name  # a replayed start is not another attempt
        run_id = run.info.run_id
        keys = {k for record in local["losses"] for k, v in record.items() if isinstance(v, float)}  # not info
        assert keys >= {"loss_d", "loss_g"}
        for key in sorted(keys):
            history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
            assert history == sorted((r["step"], r[key]) for r in local["losses"]), (spec.name, key)
        for key, value in local["final_losses"].items():
            assert run.data.metrics[f"final/{key}"] == value
        for key, value in local["wall_times"].items():
            if key.endswith("_s"):
                assert run.data.metrics[f"time/{key}"] == pytest.approx(value)
        expected = {**tr.spec_params(spec), **flatten("hp", local["provenance"]["method_config"]),
                    **{k: _param_value(local["provenance"].get(k)) for k in SPLIT_PARAMS}}
        assert {k: run.data.params.get(k) for k in expected} == expected, spec.name
        images = [a.path for a in client.list_artifacts(run_id, "images") if a.path.endswith(".png")]
        assert len(images) == 1 and Path(images[0]).name.startswith(f"{tr.SAMPLES_IMAGE_KEY}+step+{spec.budget.steps}+")
        assert {"result.json", "samples.png", "shots.png"} <= {a.path for a in client.list_artifacts(run_id)}


@pytest.mark.timeout(1800)  # three server starts: seconds each, minutes on a loaded machine
def test_server_dies_mid_trial_and_returns_nothing_is_lost_or_duplicated(tmp_path, server, monkeypatch, caplog):
    """Four trials, every loss record flushed at once. The server is killed in the middle of trial 1, restarted in
    the middle of trial 2 (the kept writes go in then, in order), killed again in the middle of trial 3 and stays
    down past the end of the run: the run reports what is unwritten and the command that writes it; that command, in
    a new process once the server is back, writes it. Afterwards MLflow holds exactly what the result.json files hold,
    in one child run per trial."""
    monkeypatch.setattr(tr.runs, "_FLUSH_SECONDS", 0.0)
    monkeypatch.setenv("HARNESS_TRACKING_WAIT_S", "2")
    suite, suite_file = _suite(tmp_path, seeds=4)
    run = RunDir.create(suite, suite_file, path=tmp_path / "run")
    context = tr.start_run_tracking(suite, suite_file, run.path, server.url, executor="inprocess")
    specs = expand(suite)
    chaos = ServerChaos(server, {(1, 10): "kill", (2, 10): "start", (3, 10): "kill"})
    timings = {}
    with caplog.at_level(logging.WARNING):
        for spec in specs:
            started = time.monotonic()
            result = run_trial(spec, run.path, device="cpu", callbacks=[tr.TrackingCallback(context), chaos])
            timings[spec.seed] = time.monotonic() - started
            assert result.status == "ok"
        left = tr.finish_run_tracking(context, "FINISHED")
    assert [a for a, *_ in chaos.done] == ["kill", "start", "kill"]
    text = caplog.text
    assert "unreachable" in text and "answers again" in text  # kept during the outage, written when it was back
    assert "disabled after an error" not in text  # an outage is not an error that stops a trial's tracking
    spool = outbox.spool_path(run.path, context.parent_run_id)
    assert left > 0 and spool.is_file()
    kept = outbox.read_spool(spool)[1]
    assert {op["op"] for op in kept} >= {"metrics", "terminate", "parent_finish"}
    assert {op["trial"] for op in kept if op.get("trial")} == {specs[3].trial_id}  # trial 1's writes went in
    assert f"harness sync-tracking {run.path}" in text

    server.start()
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    synced = subprocess.run([sys.executable, "-m", "harness.cli", "sync-tracking", str(run.path)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert f"{len(kept)} kept writes written" in synced.stdout.replace("\n", " ")
    assert not spool.exists()

    client = tr.client_for(server.url)
    _check_child_runs(client, context, run.path, specs)
    parent = client.get_run(context.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["harness.trials_ok"] == "4"
    again = subprocess.run([sys.executable, "-m", "harness.cli", "sync-tracking", str(run.path)], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "no kept tracking writes" in again.stdout
    print(f"trial wall times under the outage plan (s): {timings}")


@pytest.mark.timeout(1800)
def test_writes_kept_by_a_dead_driver_are_written_by_the_next_invocation(tmp_path, server, monkeypatch):
    """The server is down for a whole trial and the end of the run; the driver then exits (its memory is gone). The
    next invocation with the same run directory writes the kept writes into the same child run before anything
    else, reopens the same parent (not ended by the earlier invocation's kept end), and the run closes normally."""
    monkeypatch.setenv("HARNESS_TRACKING_WAIT_S", "0")
    suite, suite_file = _suite(tmp_path, seeds=1, steps=12)
    run = RunDir.create(suite, suite_file, path=tmp_path / "run")
    context = tr.start_run_tracking(suite, suite_file, run.path, server.url, executor="inprocess")
    [spec] = expand(suite)
    server.kill()
    started = time.monotonic()
    assert run_trial(spec, run.path, device="cpu", callbacks=[tr.TrackingCallback(context)]).status == "ok"
    assert tr.finish_run_tracking(context, "FINISHED") > 0
    assert time.monotonic() - started < 240, "the driver waited on MLflow's own minutes of retries"
    spool = outbox.spool_path(run.path, context.parent_run_id)
    assert [op["op"] for op in outbox.read_spool(spool)[1]][0] == "start"  # even the child run is still to make

    monkeypatch.setattr(outbox, "_OUTBOXES", {})  # a new driver process
    server.start()
    again = tr.start_run_tracking(suite, suite_file, run.path, server.url, executor="inprocess")
    assert again.parent_run_id == context.parent_run_id
    assert not spool.exists()
    client = tr.client_for(server.url)
    parent = client.get_run(context.parent_run_id)
    assert parent.info.status == "RUNNING" and parent.data.tags["harness.invocations"] == "2"
    _check_child_runs(client, again, run.path, [spec])
    assert tr.finish_run_tracking(again, "FINISHED") == 0
    parent = client.get_run(context.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["harness.trials_ok"] == "1"


def test_replaying_writes_that_already_reached_the_store_changes_nothing(tmp_path):
    """A driver can die after a kept write reached the store but before it was struck from the spool file: replaying
    it again must not add a metric point, an attempt, an image or a child run (local sqlite store, no server)."""
    suite, suite_file = _suite(tmp_path, seeds=1, steps=8)
    run = RunDir.create(suite, suite_file, path=tmp_path / "run")
    context = tr.start_run_tracking(suite, suite_file, run.path, tr.default_tracking_uri(run.path),
                                    executor="inprocess")
    [spec] = expand(suite)
    written: list[dict] = []
    box = outbox.outbox_for(context)
    original = box.applier.apply

    def record(op):
        original(op)
        written.append(op)

    box.applier.apply = record
    assert run_trial(spec, run.path, device="cpu", callbacks=[tr.TrackingCallback(context)]).status == "ok"
    assert [op["op"] for op in written][0] == "start" and written[-1]["op"] == "terminate"
    client = tr.client_for(context.tracking_uri)

    def state():
        [child] = tr.iter_children_by_trial(client, context)[spec.trial_id]
        run_id = child.info.run_id
        history = {key: len(client.get_metric_history(run_id, key)) for key in child.data.metrics}
        images = [a.path for a in client.list_artifacts(run_id, "images")]
        return child.info.run_id, child.info.status, child.data.tags["harness.attempts"], child.data.params, \
            history, images

    before = state()
    spool = outbox.spool_path(run.path, context.parent_run_id)
    spool.write_text("".join(json.dumps(line) + "\n" for line in [box._header(), *written]))
    outbox._OUTBOXES.clear()  # the next process
    [(_, replayed, left)] = outbox.replay_pending(run.path)
    assert (replayed, left) == (len(written), 0) and not spool.exists()
    assert state() == before


# ---------------------------------------------------------------------------------------------------- storage


def _stored_run(tmp_path: Path, retry_s: float) -> tuple[RunStorage, Path, Path]:
    """A run stored in ``file://<tmp>/mount/shared`` (the mount point of a shared file system); its local copy."""
    mount = tmp_path / "mount"
    (mount / "shared").mkdir(parents=True)
    local = tmp_path / "run"
    (local / "trials" / "a").mkdir(parents=True)
    (local / "trials" / "a" / "result.json").write_text('{"status": "ok", "x": 1}')
    storage = RunStorage((mount / "shared").as_uri(), "suite/run", retry_s=retry_s, first_retry_s=0.1)
    storage.upload(local)
    return storage, mount, local


def _unmount(mount: Path) -> None:
    """The share goes away: its contents are no longer under the mount point, which is an empty folder (what an
    unmounted NFS or a detached FUSE share leaves): lookups answer "not found", writes land on the local disk."""
    mount.rename(mount.with_name("mount.offline"))
    mount.mkdir()


def _remount(mount: Path) -> None:
    mount.rmdir()  # fails if anything was written into the empty mount point meanwhile
    mount.with_name("mount.offline").rename(mount)


def _remount_after(mount: Path, seconds: float) -> threading.Timer:
    timer = threading.Timer(seconds, _remount, (mount,))
    timer.start()
    return timer


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_storage_away_for_a_short_while_is_retried_and_nothing_is_taken_for_missing(tmp_path, caplog):
    """Each operation runs while the share is away and succeeds once it is back (retries logged): a stored result
    is read as what it is, never as "not there" (a finished trial would be computed again), an upload lands in the
    share (not in the empty mount point), a download brings every file."""
    storage, mount, local = _stored_run(tmp_path, retry_s=60)
    (local / "trials" / "b").mkdir()
    (local / "trials" / "b" / "result.json").write_text('{"status": "ok", "x": 2}')
    with caplog.at_level(logging.WARNING, logger="harness.storage"):
        _unmount(mount)
        timer = _remount_after(mount, 1.0)
        assert storage.read_text("trials/a/result.json") == '{"status": "ok", "x": 1}'
        timer.join()
        reads = caplog.text.count("retry")
        assert reads >= 1 and "read" in caplog.text and storage.uri in caplog.text

        _unmount(mount)
        timer = _remount_after(mount, 1.0)
        storage.upload(local / "trials" / "b", "trials/b")
        timer.join()
        assert (mount / "shared" / "suite" / "run" / "trials" / "b" / "result.json").read_text() == \
            '{"status": "ok", "x": 2}'
        assert "upload" in caplog.text and caplog.text.count("retry") > reads

        _unmount(mount)
        timer = _remount_after(mount, 1.0)
        assert storage.download("trials", tmp_path / "back" / "trials")
        timer.join()
    assert _digest(tmp_path / "back") == _digest(local)
    assert not storage.exists("trials/nothing")  # with the share there, "not found" is believed


def test_storage_away_past_the_limit_is_a_clear_error_and_local_results_are_intact(tmp_path):
    """The share stays away: every operation gives up after its limit with an error naming the operation, the URI
    and the path, and saying the local copy is intact; nothing local changed, nothing was written into the empty
    mount point, and a stored result is never reported as absent."""
    storage, mount, local = _stored_run(tmp_path, retry_s=1.0)
    (local / "trials" / "b").mkdir()
    (local / "trials" / "b" / "result.json").write_text('{"status": "ok", "x": 2}')
    before = _digest(local)
    _unmount(mount)
    try:
        started = time.monotonic()
        with pytest.raises(StorageUnavailable) as upload:
            storage.upload(local / "trials" / "b", "trials/b")
        elapsed = time.monotonic() - started
        message = str(upload.value)
        assert f"storage {storage.uri} unreachable: upload {storage.root}/trials/b still failed after" in message
        assert "limit 1 s" in message and "HARNESS_STORAGE_RETRY_S" in message
        assert f"The local copy {local / 'trials' / 'b'} is intact" in message
        assert 0.5 <= elapsed < 10
        with pytest.raises(StorageUnavailable, match=r"unreachable: read .*/suite/run/trials/a/result.json"):
            storage.read_text("trials/a/result.json")  # not None: the trial is not taken for unfinished
        with pytest.raises(StorageUnavailable, match="unreachable: lookup"):
            storage.exists("trials/a/result.json")
        with pytest.raises(StorageUnavailable, match="unreachable: download"):
            storage.download("trials", tmp_path / "back")
        assert not (tmp_path / "back").exists()
        assert _digest(local) == before
        assert list(mount.iterdir()) == []  # nothing went to the local disk under the mount point
    finally:
        _remount(mount)
    assert storage.read_text("trials/a/result.json") == '{"status": "ok", "x": 1}'


def test_cli_reports_storage_that_stays_away_without_a_traceback(tmp_path, capsys):
    """The end of a run copies the run directory to storage: with the share away past the limit, the command says
    which URI and operation failed and that the local run is intact, and exits 3 (not a traceback)."""
    import typer

    from harness import cli

    storage, mount, local = _stored_run(tmp_path, retry_s=0.5)
    (local / "trials" / "a" / "result.json").write_text('{"status": "ok", "x": 3}')
    _unmount(mount)
    try:
        with pytest.raises(typer.Exit) as exited:
            cli._write_report(local, storage)
    finally:
        _remount(mount)
    assert exited.value.exit_code == cli.STORAGE_EXIT == 3
    err = capsys.readouterr().err.replace("\n", "")
    assert f"run not stored: storage {storage.uri} unreachable: upload {storage.root} still failed" in err
    assert "Traceback" not in err and f"The local copy {local} is intact" in err
    assert json.loads((local / "trials" / "a" / "result.json").read_text())["x"] == 3
    assert json.loads(storage.read_text("trials/a/result.json"))["x"] == 1  # the stored copy is the older one
