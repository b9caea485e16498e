"""The --cluster path: cluster YAML validation, shared storage, the Ray Job request, and a loopback end to end run on
Ray's fake multi-node provider (a head with no CPUs; the autoscaler starts worker nodes as local processes)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from harness.cluster import ClusterConfigError, job_request, load_cluster_file
from harness.storage import RunStorage, StorageError, check_storage_uri

ROOT = Path(__file__).resolve().parents[1]
HARNESS = [sys.executable, "-m", "harness"]
FAKE_HEAD_NODE_ID = "f" * 51 + "00000"  # ray.autoscaler._private.fake_multi_node.node_provider.FAKE_HEAD_NODE_ID


def _write(tmp_path: Path, data, name: str = "cluster.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def _local_config() -> dict:
    return yaml.safe_load((ROOT / "ray_cluster.local.yaml").read_text())


def test_shipped_cluster_files_are_valid():
    aws = load_cluster_file(ROOT / "ray_cluster.yaml")
    assert (aws.provider, aws.max_workers, aws.dashboard_port()) == ("aws", 8, 8265)
    assert aws.config["available_node_types"]["ray.worker.gpu"]["min_workers"] == 0
    assert aws.config["available_node_types"]["ray.worker.gpu"]["resources"]["GPU"] == 1
    local = load_cluster_file(ROOT / "ray_cluster.local.yaml")
    assert (local.provider, local.max_workers) == ("fake_multinode", 2)
    assert local.dashboard_url() == "http://127.0.0.1:8265"
    assert local.dashboard_url("127.0.0.1:9999") == "http://127.0.0.1:9999"


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda c: c.pop("provider"), "provider: required"),
        (lambda c: c["provider"].pop("type"), "provider.type: required"),
        (lambda c: c.update(max_workers="many"), "max_workers: 'many' is not of type 'integer'"),
        (lambda c: c.update(head_node_type="ray.head.big"), "head_node_type: 'ray.head.big' is not one of"),
        (lambda c: c["available_node_types"]["ray.worker.cpu"].update(min_workers=3, max_workers=1),
         "available_node_types.ray.worker.cpu: min_workers 3 > max_workers 1"),
        (lambda c: c.update(workers=4), "Additional properties are not allowed ('workers' was unexpected)"),
    ],
)
def test_bad_cluster_yaml_names_file_and_field(tmp_path, mutate, expected):
    config = _local_config()
    mutate(config)
    path = _write(tmp_path, config)
    with pytest.raises(ClusterConfigError) as err:
        load_cluster_file(path)
    assert str(path) in str(err.value)
    assert expected in str(err.value)


def test_every_problem_is_reported_at_once(tmp_path):
    config = _local_config()
    config.update(max_workers="many", head_node_type="nope")
    with pytest.raises(ClusterConfigError) as err:
        load_cluster_file(_write(tmp_path, config))
    assert len(err.value.problems) == 2


@pytest.mark.parametrize(("text", "expected"), [("a: [1, 2", "not valid YAML"), ("- 1\n- 2\n", "expected a mapping")])
def test_unreadable_cluster_yaml(tmp_path, text, expected):
    with pytest.raises(ClusterConfigError, match=expected):
        load_cluster_file(_write(tmp_path, text))
    with pytest.raises(ClusterConfigError, match="no such file"):
        load_cluster_file(tmp_path / "missing.yaml")


def test_storage_refuses_local_paths_and_unknown_schemes():
    with pytest.raises(StorageError, match="local path"):
        check_storage_uri("/mnt/runs")
    with pytest.raises(StorageError, match="pyarrow cannot open"):
        check_storage_uri("nosuchfs://bucket/x")
    assert check_storage_uri("file:///tmp/runs/") == "file:///tmp/runs"


def test_run_storage_round_trip(tmp_path):
    local = tmp_path / "run"
    (local / "trials" / "a").mkdir(parents=True)
    (local / "trials" / "a" / "result.json").write_text('{"x": 1}')
    (local / "ray").mkdir()
    (local / "ray" / "state").write_text("tune")
    (local / "run.json").write_text("{}")
    storage = RunStorage(f"file://{tmp_path / 'shared'}", "suite/run")
    storage.upload(local, skip=("ray",))
    assert storage.read_text("trials/a/result.json") == '{"x": 1}'
    assert not storage.exists("ray")  # Tune keeps its own state there
    assert storage.download("trials", tmp_path / "back" / "trials")
    assert (tmp_path / "back" / "trials" / "a" / "result.json").read_text() == '{"x": 1}'
    assert not storage.download("nothing", tmp_path / "none")


@pytest.fixture
def s3_server(monkeypatch):
    """An S3-compatible server on loopback (moto), reached as pyarrow and boto3 reach MinIO or Ceph: through
    ``AWS_ENDPOINT_URL``; a bucket ``runs``. Yields the environment a harness process needs."""
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    boto3.client("s3").create_bucket(Bucket="runs")
    try:
        yield env
    finally:
        server.stop()


def test_run_with_s3_storage_uploads_the_run_and_resumes_from_it(tmp_path, s3_server):
    """``--storage s3://`` through an S3-compatible server: Tune's experiment, every trial and the report land in the
    bucket; with the local run directory gone, the same command fetches the stored run and trains nothing again."""
    import boto3

    run_dir = tmp_path / "runs" / "smoke" / "on-s3"
    args = ("run", "suites/smoke.yaml", "--storage", "s3://runs/harness", "--run-dir", str(run_dir), "--no-tracking",
            "--no-progress")
    first = _cli(*args, env=s3_server, timeout=400)
    assert first.returncode == 0, (first.stdout + first.stderr)[-4000:]
    keys = {o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="runs", Prefix="harness/")["Contents"]}
    prefix = "harness/smoke/on-s3/"
    assert sum(k.startswith(prefix + "trials/") and k.endswith("/result.json") for k in keys) == 2
    assert prefix + "report/index.html" in keys
    assert any(k.startswith(prefix + "ray/tune/") for k in keys)  # Tune's experiment state
    results = {p.parent.name: p.read_text() for p in run_dir.glob("trials/*/result.json")}
    assert len(results) == 2

    shutil.rmtree(run_dir)
    again = _cli(*args, env=s3_server, timeout=300)
    out = again.stdout + again.stderr
    assert again.returncode == 0, out[-4000:]
    assert "resuming the run stored at s3://runs/harness/smoke/on-s3" in out.replace("\n", "")
    assert {p.parent.name: p.read_text() for p in run_dir.glob("trials/*/result.json")} == results


def test_job_request_ships_the_project_and_passes_tracking(tmp_path):
    request = job_request(ROOT / "suites" / "smoke.yaml", root=ROOT, storage="s3://b/runs", run_dir="runs/smoke/x",
                          tracking_uri="http://mlflow:5000")
    assert request.entrypoint.startswith("python -m harness run suites/smoke.yaml --address auto --storage s3://b/runs")
    assert "--run-dir runs/smoke/x" in request.entrypoint and "--no-tracking" not in request.entrypoint
    assert request.runtime_env["working_dir"] == str(ROOT)
    assert ".venv" in request.runtime_env["excludes"] and "runs" in request.runtime_env["excludes"]
    assert request.runtime_env["env_vars"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    untracked = job_request(ROOT / "suites" / "smoke.yaml", root=ROOT, storage="s3://b", run_dir="r", tracking_uri=None)
    assert untracked.entrypoint.endswith("--no-tracking")
    outside = _write(tmp_path, "name: x\n", "suite.yaml")
    with pytest.raises(FileNotFoundError, match="outside the project"):
        job_request(outside, root=ROOT, storage="s3://b", run_dir="r", tracking_uri=None)


def _cli(*args: str, env=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([*HARNESS, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "RAY_AUTH_MODE": "disabled", **(env or {})})


def test_cli_rejects_bad_cluster_yaml_before_anything_runs(tmp_path):
    config = _local_config()
    config["head_node_type"] = "nope"
    bad = _write(tmp_path, config)
    result = _cli("run", "suites/smoke.yaml", "--cluster", str(bad), "--storage", f"file://{tmp_path}",
                  "--runs-root", str(tmp_path / "runs"), "--no-tracking")
    assert result.returncode == 2, result.stderr
    assert f"{bad}: head_node_type: 'nope' is not one of" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_cli_refuses_a_local_storage_path_for_a_multi_node_cluster(tmp_path):
    result = _cli("run", "suites/smoke.yaml", "--cluster", str(ROOT / "ray_cluster.local.yaml"), "--storage",
                  str(tmp_path / "shared"), "--runs-root", str(tmp_path / "runs"), "--no-tracking")
    assert result.returncode == 2
    assert "is a local path" in result.stderr and "file:///" in result.stderr
    missing = _cli("run", "suites/smoke.yaml", "--cluster", str(ROOT / "ray_cluster.local.yaml"),
                   "--runs-root", str(tmp_path / "runs"), "--no-tracking")
    assert missing.returncode == 2 and "--storage" in missing.stderr
    assert not (tmp_path / "runs").exists()


def test_cli_cluster_needs_a_reachable_dashboard(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket is closed
    result = _cli("run", "suites/smoke.yaml", "--cluster", str(ROOT / "ray_cluster.local.yaml"), "--dashboard",
                  f"http://127.0.0.1:{port}", "--storage", f"file://{tmp_path}/shared", "--runs-root",
                  str(tmp_path / "runs"), "--no-tracking")
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"cannot reach the Ray dashboard at http://127.0.0.1:{port}" in result.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def fake_cluster(tmp_path):
    """Ray's fake multi-node cluster on free ports, stopped by signalling only its own process group."""
    gcs_port, dashboard_port, agent_port = _free_port(), _free_port(), _free_port()
    config = _local_config()
    config["provider"]["gcs_address"] = f"127.0.0.1:{gcs_port}"
    cluster_file = _write(tmp_path, config, "ray_cluster.local.yaml")
    # the job's `python` is the head's: this interpreter's environment, as a cluster's setup_commands would install
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    # TMPDIR: the job keeps its own copy of the run in a temporary folder; keep it inside this test's folder
    env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "RAY_AUTH_MODE": "disabled", "PATH": path, "TMPDIR": str(tmp_path)}
    temp_dir = tempfile.mkdtemp(prefix="rayfake-", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    log = (tmp_path / "head.log").open("w")
    head = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--num-cpus=0", f"--port={gcs_port}",
         f"--dashboard-port={dashboard_port}", "--include-dashboard=true",
         f"--dashboard-agent-listen-port={agent_port}",  # not 52365: another Ray on this machine may hold it
         f"--autoscaling-config={cluster_file}", f"--temp-dir={temp_dir}"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", dashboard_port), timeout=1).close()
                break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail("the fake cluster's dashboard did not come up in 90 s:\n"
                        + (tmp_path / "head.log").read_text()[-3000:])
        yield cluster_file, f"http://127.0.0.1:{dashboard_port}"
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(head.pid, signal.SIGKILL)  # raylets of the fake worker nodes share the group
        except ProcessLookupError:
            pass
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_cluster_run_end_to_end_as_a_ray_job_on_loopback(tmp_path, fake_cluster):
    cluster_file, dashboard = fake_cluster
    shared = tmp_path / "shared"
    run_dir = tmp_path / "runs" / "smoke" / "loopback"
    result = _cli("run", "suites/smoke.yaml", "--cluster", str(cluster_file), "--dashboard", dashboard,
                  "--storage", f"file://{shared}", "--run-dir", str(run_dir), "--no-tracking", timeout=480)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert "submitted Ray Job" in out
    results = [json.loads(p.read_text()) for p in sorted(run_dir.glob("trials/*/result.json"))]
    assert sorted(r["spec"]["label"] for r in results) == ["cgan", "dcgan"]
    assert all(r["status"] == "ok" for r in results)
    nodes = {r["provenance"]["ray_node_id"] for r in results}
    assert FAKE_HEAD_NODE_ID not in nodes  # the head has no CPUs: trials ran on autoscaled worker nodes
    assert (shared / "smoke" / "loopback" / "report" / "index.html").exists()
    assert (run_dir / "report" / "index.html").exists()
    # the same command again: the stored run is resumed, nothing is trained twice
    again = _cli("run", "suites/smoke.yaml", "--cluster", str(cluster_file), "--dashboard", dashboard,
                 "--storage", f"file://{shared}", "--run-dir", str(run_dir), "--no-tracking", timeout=300)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert "2 trials, 2 already finished" in again.stdout + again.stderr
