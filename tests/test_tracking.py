"""MLflow tracking against a real `mlflow server` (started here on a free port, stopped by its pid), with the smoke
suite run through the in-process and the Ray executors; store selection, fail-fast checks, resume, and the UI."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from harness import tracking as tr
from harness.executors import run_inprocess, run_ray
from harness.run import RunDir
from harness.suite import expand, load_suite, parse_suite
from harness.trial import run_trial, trial_dir_for

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "suites" / "smoke.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"mlflow server did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies, even if it is killed before its teardown
    (the server then stops its own workers)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _spawn(command: list[str], cwd: Path, log: Path, **env: str) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **env},
                                preexec_fn=_die_with_parent if sys.platform == "linux" else None)


def _stop(process: subprocess.Popen) -> None:
    """Stop the server we started: its own process group (it forks uvicorn workers), by its pid."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    try:  # stragglers of that group (uvicorn worker), if any
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=10)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    log = root / "server.log"
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
               "--artifacts-destination", (root / "artifacts").as_uri(), "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1"]
    process = _spawn(command, root, log, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process, log)
        yield url
    finally:
        _stop(process)


@pytest.fixture(autouse=True)
def _local_ray_without_token(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _suite_file(tmp_path: Path, **evaluation) -> Path:
    data = yaml.safe_load(SMOKE.read_text())
    data["evaluation"].update(evaluation)
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _check_tracked(client, context: tr.TrackingContext, specs, *, metrics: tuple[str, ...] = ()) -> dict[str, object]:
    """One parent; exactly one child per trial, linked by mlflow.parentRunId; identical param keys; images,
    losses and final metrics present. Returns the child run of each trial id."""
    parent = client.get_run(context.parent_run_id)
    assert parent.data.tags[tr.KIND_TAG] == "suite"
    assert parent.info.experiment_id == context.experiment_id
    assert client.get_experiment(context.experiment_id).name == specs[0].suite
    grouped = tr.iter_children_by_trial(client, context)
    assert sorted(grouped) == sorted(s.trial_id for s in specs)
    assert all(len(runs) == 1 for runs in grouped.values()), {k: len(v) for k, v in grouped.items()}
    children = {tid: runs[0] for tid, runs in grouped.items()}
    keys = {tid: frozenset(run.data.params) for tid, run in children.items()}
    assert len(set(keys.values())) == 1, "child runs do not share the same param keys"
    common = next(iter(keys.values()))
    for key in ("method", "label", "shots", "seed", "dataset", "source", "split_hash", "data_source", "hp.width",
                "hp.sampling"):
        assert key in common
    for spec in specs:
        run = children[spec.trial_id]
        assert run.data.tags[tr.PARENT_TAG] == context.parent_run_id
        assert run.info.run_name == spec.name
        assert run.info.status == "FINISHED"
        assert run.data.tags[tr.STATUS_TAG] == "ok"
        assert run.data.params["label"] == spec.label and run.data.params["seed"] == str(spec.seed)
        assert run.data.params["split_hash"] != tr.NOT_APPLICABLE
        if spec.method == "dcgan":  # a cgan-only hyper-parameter: present, marked not applicable
            assert run.data.params["hp.sampling"] == tr.NOT_APPLICABLE
        images = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
        assert any(Path(p).name.startswith(f"{tr.SAMPLES_IMAGE_KEY}+step+") and p.endswith(".png") for p in images)
        assert run.data.tags.get("mlflow.loggedImages", "").lower() == "true"
        top = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"result.json", "samples.png", "shots.png"} <= top
        local = json.loads(trial_dir_for_spec(spec).read_text())
        for key, value in local["final_losses"].items():
            assert run.data.metrics[f"final/{key}"] == pytest.approx(value)
        assert run.data.metrics["time/fit_s"] > 0
        loss = "loss_g" if spec.method == "cgan" else f"loss_g/class_{spec.novel_classes[0]}"
        history = client.get_metric_history(run.info.run_id, loss)
        assert len(history) >= spec.budget.steps // spec.budget.log_every
        for name in metrics:
            assert name in run.data.metrics
            if local["metrics"][name].get("std") is not None:
                assert f"{name}_std" in run.data.metrics
    return children


_RUN_DIRS: dict[str, Path] = {}


def trial_dir_for_spec(spec) -> Path:
    return trial_dir_for(_RUN_DIRS[spec.trial_id], spec) / "result.json"


def _start(suite_file: Path, run_dir: Path, uri: str, executor: str):
    suite = load_suite(suite_file)
    run = RunDir.create(suite, suite_file, path=run_dir)
    uri = tr.resolve_tracking_uri(uri, run.path)
    tr.check_tracking_server(uri)
    return suite, run, tr.start_run_tracking(suite, suite_file, run.path, uri, executor=executor)


def test_inprocess_suite_logs_one_parent_and_one_child_per_trial_and_resume_adds_none(tmp_path, mlflow_server):
    from harness.metrics import METRICS

    cheap = [m for m in ("accuracy",) if m in METRICS]
    suite_file = _suite_file(tmp_path, metrics=cheap, accuracy={"steps": 20, "seeds": 2})
    suite, run, context = _start(suite_file, tmp_path / "run", mlflow_server, "inprocess")
    specs = expand(suite)
    _RUN_DIRS.update({s.trial_id: run.path for s in specs})
    results = run_inprocess(specs, run.path, device="cpu", tracking=context)
    assert [r.status for r in results] == ["ok", "ok"]
    tr.finish_run_tracking(context, "FINISHED")

    client = tr.client_for(mlflow_server)
    children = _check_tracked(client, context, specs, metrics=tuple(cheap))
    parent = client.get_run(context.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["harness.suite_hash"] and parent.data.tags["harness.git_commit"]
    assert parent.data.tags["harness.executor"] == "inprocess" and parent.data.tags["harness.trials_ok"] == "2"
    assert {a.path for a in client.list_artifacts(context.parent_run_id, "suite")} >= {"suite/suite.yaml",
                                                                                        "suite/run.json"}
    assert json.loads(Path(client.download_artifacts(children[specs[0].trial_id].info.run_id, "result.json",
                                                     str(tmp_path))).read_text())["trial_id"] == specs[0].trial_id

    # resume: a second invocation on the same run directory reopens the same parent, and re-running the trials
    # (as resumed or retried trials do) logs into their existing child runs
    again = tr.start_run_tracking(suite, suite_file, run.path, context.tracking_uri, executor="inprocess")
    assert again.parent_run_id == context.parent_run_id
    run_inprocess(specs, run.path, device="cpu", tracking=again)
    tr.finish_run_tracking(again, "FINISHED")
    children_after = _check_tracked(client, again, specs, metrics=tuple(cheap))
    assert {k: r.info.run_id for k, r in children_after.items()} == {k: r.info.run_id for k, r in children.items()}
    assert all(r.data.tags["harness.attempts"] == "2" for r in children_after.values())
    parents = client.search_runs([context.experiment_id], f"tags.`{tr.KIND_TAG}` = 'suite' and "
                                 f"tags.`harness.run_dir` = '{run.path.resolve()}'")
    assert len(parents) == 1 and parents[0].data.tags["harness.invocations"] == "2"


def test_ray_trials_are_tracked_by_the_driver_and_workers_need_no_mlflow(tmp_path, mlflow_server):
    """Under Ray, trials report to the driver, which writes MLflow: the workers here cannot even import mlflow (a
    package on their path that refuses to load), and every trial still has its child run with losses, metrics and
    result.json."""
    import ray

    from harness.executors.ray_tune import init_ray

    blocked = tmp_path / "no-mlflow" / "mlflow"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('workers must not use MLflow')\n")
    if ray.is_initialized():
        pytest.skip("needs its own local Ray (worker environment)")
    connection = init_ray(num_cpus=2, runtime_env={"env_vars": {"PYTHONPATH": str(blocked.parent)}})
    try:
        _ray_runs(tmp_path, mlflow_server)
    finally:
        if connection.started:
            ray.shutdown()


def _ray_runs(tmp_path: Path, mlflow_server: str) -> None:
    suite, run, context = _start(SMOKE, tmp_path / "ray-run", mlflow_server, "ray")
    specs = expand(suite)
    _RUN_DIRS.update({s.trial_id: run.path for s in specs})
    results = run_ray(specs, run.path, device="cpu", num_cpus=2, verbose=0, tracking=context)
    assert [r.status for r in results] == ["ok", "ok"]
    client = tr.client_for(mlflow_server)
    children = _check_tracked(client, context, specs)

    # the same trials run again into the same context (fresh Tune experiment, so run_trial really runs again in
    # new worker processes): still one child run per trial
    again_dir = tmp_path / "ray-again"
    RunDir.create(suite, SMOKE, path=again_dir)
    _RUN_DIRS.update({s.trial_id: again_dir for s in specs})
    assert [r.status for r in run_ray(specs, again_dir, device="cpu", num_cpus=2, verbose=0,
                                      tracking=context)] == ["ok", "ok"]
    tr.finish_run_tracking(context, "FINISHED")
    after = _check_tracked(client, context, specs)
    assert {k: r.info.run_id for k, r in after.items()} == {k: r.info.run_id for k, r in children.items()}
    assert client.get_run(context.parent_run_id).data.tags["harness.executor"] == "ray"


def test_unreachable_server_is_a_clear_error_before_any_trial(tmp_path):
    url = f"http://127.0.0.1:{_free_port()}"
    started = time.time()
    with pytest.raises(ConnectionError, match=f"cannot reach the MLflow tracking server at {url}"):
        tr.check_tracking_server(url)
    assert time.time() - started < 10
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "NO_COLOR": "1", "COLUMNS": "200"}
    out = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(SMOKE), "--executor", "inprocess",
                          "--run-dir", str(tmp_path / "run"), "--tracking-uri", url, "--no-progress"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "cannot reach the MLflow tracking server" in out.stdout + out.stderr
    assert not list((tmp_path / "run").glob("trials/*")), "trials ran although the tracking server is unreachable"


def test_tracking_uri_resolution(tmp_path, monkeypatch):
    """Flag > $MLFLOW_TRACKING_URI > the run directory's sqlite store; a local store is fine with clusters too (only
    the driver writes it); relative local URIs become absolute."""
    run_dir = tmp_path / "run"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tr.resolve_tracking_uri(None, run_dir) == f"sqlite:///{run_dir.resolve()}/mlflow.db"
    assert tr.default_tracking_uri(run_dir) == f"sqlite:///{run_dir.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert tr.resolve_tracking_uri(None, run_dir) == "http://tracking.example:5000"
    assert tr.resolve_tracking_uri("http://other:1", run_dir) == "http://other:1"  # flag wins
    monkeypatch.chdir(tmp_path)
    assert tr.resolve_tracking_uri("sqlite:///rel.db", run_dir) == f"sqlite:///{tmp_path}/rel.db"
    assert tr.resolve_tracking_uri("mlruns", run_dir) == (tmp_path / "mlruns").as_uri()
    tr.check_tracking_server("sqlite:///anything.db")  # only servers are probed


def test_tracking_failure_inside_a_trial_keeps_the_local_result(tmp_path, caplog):
    """A context whose server is gone: the trial logs a warning within seconds and still writes its result.json."""
    suite = parse_suite(yaml.safe_load(SMOKE.read_text()))
    spec = expand(suite)[1]
    dead = tr.TrackingContext(f"http://127.0.0.1:{_free_port()}", "1", "0" * 32)
    started = time.time()
    with caplog.at_level("WARNING", logger="harness.tracking"):
        result = run_trial(spec, tmp_path, device="cpu", callbacks=[tr.TrackingCallback(dead)])
    assert time.time() - started < 60
    assert result.status == "ok"
    assert json.loads((trial_dir_for(tmp_path, spec) / "result.json").read_text())["status"] == "ok"
    assert f"MLflow tracking of trial {spec.name} disabled" in caplog.text


def test_default_store_lives_in_the_run_dir_and_harness_ui_serves_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    suite = parse_suite(yaml.safe_load(SMOKE.read_text()))
    run = RunDir.create(suite, SMOKE, path=tmp_path / "run")
    uri = tr.resolve_tracking_uri(None, run.path)
    context = tr.start_run_tracking(suite, SMOKE, run.path, uri, executor="inprocess")
    [spec] = expand(suite, ["cgan"])
    run_inprocess([spec], run.path, device="cpu", tracking=context)
    tr.finish_run_tracking(context, "FINISHED")
    assert (run.path / "mlflow.db").is_file() and (run.path / "mlartifacts").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"], "MLflow wrote outside the run directory"
    assert json.loads((run.path / tr.TRACKING_FILE).read_text())["stores"][uri]["parent_run_id"] == \
        context.parent_run_id

    port = _free_port()
    log = tmp_path / "ui.log"
    code = f"from pathlib import Path; from harness.tracking import serve_ui; serve_ui(Path({str(run.path)!r}), {port})"
    ui = _spawn([sys.executable, "-c", code], tmp_path, log)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", ui, log)
        query = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name?experiment_name=smoke"
        with urllib.request.urlopen(query, timeout=10) as response:
            experiment = json.loads(response.read())["experiment"]
        assert experiment["experiment_id"] == context.experiment_id
        # MLflow 3's UI opens an untagged experiment on its GenAI traces page; ours is a model-training experiment,
        # and the printed link is its runs table (the parent run with its children)
        assert {"key": "mlflow.experimentKind", "value": "custom_model_development"} in experiment["tags"]
        assert f"http://127.0.0.1:{port}/#/experiments/{context.experiment_id}/runs" in log.read_text()
        ui.send_signal(signal.SIGTERM)  # `kill` of `harness ui` stops the MLflow server it started
        ui.wait(timeout=60)
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
    finally:
        _stop(ui)


def test_intermediate_evaluations_are_stepped_metrics_and_a_stopped_trial_is_killed(tmp_path):
    """A sweep trial with ASHA: ``eval/fid`` at every evaluation step; stopped by its scheduler → run KILLED, status
    tag ``stopped`` (not FAILED: nothing went wrong)."""
    from mlflow import MlflowClient

    from harness.callbacks import TrialCallback, TrialStopped
    from harness.trial import IntermediateEvaluation

    data = yaml.safe_load(SMOKE.read_text())
    data["evaluation"]["metrics"] = ["fid"]
    suite = parse_suite(data)
    run = RunDir.create(suite, SMOKE, path=tmp_path / "run")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    context = tr.start_run_tracking(suite, SMOKE, run.path, uri, executor="inprocess")
    [spec] = expand(suite, ["cgan"])
    spec = spec.model_copy(update={"budget": spec.budget.model_copy(update={"steps": 8})})

    class StopAtSix(TrialCallback):
        def on_evaluation(self, trial, steps_done, values):
            if steps_done == 6:
                raise TrialStopped("stopped after step 6")

    result = run_trial(spec, run.path, device="cpu",
                       callbacks=[IntermediateEvaluation(("fid",), 2), tr.TrackingCallback(context), StopAtSix()])
    client = MlflowClient(uri)
    [child] = tr.iter_children_by_trial(client, context)[spec.trial_id]
    history = client.get_metric_history(child.info.run_id, "eval/fid")
    assert [(m.step, m.value) for m in history] == [(e["step"], pytest.approx(e["fid"])) for e in result.evaluations]
    assert [m.step for m in history] == [2, 4, 6]
    assert child.info.status == "KILLED" and child.data.tags[tr.STATUS_TAG] == "stopped"
