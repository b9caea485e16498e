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
    # no server named: the job's driver tracks into its run directory (no URI passed, tracking stays on)
    default = job_request(ROOT / "suites" / "smoke.yaml", root=ROOT, storage="s3://b", run_dir="r")
    assert "--no-tracking" not in default.entrypoint and "MLFLOW_TRACKING_URI" not in default.runtime_env["env_vars"]
    untracked = job_request(ROOT / "suites" / "smoke.yaml", root=ROOT, storage="s3://b", run_dir="r", tracking=False)
    assert untracked.entrypoint.endswith("--no-tracking")
    shared_disk = job_request(ROOT / "suites" / "smoke.yaml", root=ROOT, storage=None, run_dir="/abs/run")
    assert "--storage" not in shared_disk.entrypoint and "--run-dir /abs/run" in shared_disk.entrypoint
    outside = _write(tmp_path, "name: x\n", "suite.yaml")
    with pytest.raises(FileNotFoundError, match="outside the project"):
        job_request(outside, root=ROOT, storage="s3://b", run_dir="r")


def test_cluster_file_metadata_carries_the_harness_settings(tmp_path):
    config = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    assert load_cluster_file(ROOT / "ray_cluster.yaml").harness_settings.storage is None  # shipped commented out
    config["metadata"] = {"fewshot_harness": {"storage": "s3://bucket/runs", "tracking_uri": "http://mlflow:5000"}}
    settings = load_cluster_file(_write(tmp_path, config)).harness_settings
    assert (settings.storage, settings.tracking_uri) == ("s3://bucket/runs", "http://mlflow:5000")
    config["metadata"] = {"fewshot_harness": {"storge": "s3://bucket/runs"}, "owner": "someone else's data"}
    with pytest.raises(ClusterConfigError, match=r"metadata\.fewshot_harness\.storge: Extra inputs are not permitted"):
        load_cluster_file(_write(tmp_path, config))
    assert load_cluster_file(ROOT / "ray_cluster.local.yaml").shares_disk
    assert not load_cluster_file(ROOT / "ray_cluster.yaml").shares_disk


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
    assert not (tmp_path / "runs").exists()


def test_a_cloud_cluster_without_storage_names_the_metadata_key_and_the_flag(tmp_path):
    missing = _cli("run", "suites/smoke.yaml", "--cluster", str(ROOT / "ray_cluster.yaml"),
                   "--runs-root", str(tmp_path / "runs"))
    assert missing.returncode == 2
    assert "fewshot_harness.storage" in missing.stderr and "metadata:" in missing.stderr
    assert "--storage" in missing.stderr
    assert not (tmp_path / "runs").exists()
    # storage from the file's metadata is taken (the run then stops at the unreachable dashboard, not at storage)
    config = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    config["metadata"] = {"fewshot_harness": {"storage": f"file://{tmp_path}/shared"}}
    with_storage = _cli("run", "suites/smoke.yaml", "--cluster", str(_write(tmp_path, config)), "--dashboard",
                        f"http://127.0.0.1:{_free_port()}", "--runs-root", str(tmp_path / "runs"))
    assert with_storage.returncode == 2 and "cannot reach the Ray dashboard" in with_storage.stderr
    assert "storage" not in with_storage.stderr.split("cannot reach")[0]


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


def _child_runs(run_dir: Path) -> list:
    from harness import tracking as tr

    client = tr.client_for(tr.default_tracking_uri(run_dir))
    [experiment] = client.search_experiments(filter_string="name = 'smoke'")
    return client.search_runs([experiment.experiment_id], f"tags.`{tr.KIND_TAG}` = 'trial'")


def test_the_local_cluster_needs_no_storage_and_tracks_into_the_run_directory(tmp_path, fake_cluster):
    """`harness run SUITE --cluster ray_cluster.local.yaml` as written (the fixture's ports need --dashboard): the fake
    nodes share this disk, so the job writes the local run directory itself, MLflow included."""
    cluster_file, dashboard = fake_cluster
    run_dir = tmp_path / "runs" / "smoke" / "shared-disk"
    result = _cli("run", "suites/smoke.yaml", "--cluster", str(cluster_file), "--dashboard", dashboard,
                  "--run-dir", str(run_dir), timeout=480)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert "storage this machine (shared disk)" in out
    results = [json.loads(p.read_text()) for p in sorted(run_dir.glob("trials/*/result.json"))]
    assert [r["status"] for r in results] == ["ok", "ok"]
    assert FAKE_HEAD_NODE_ID not in {r["provenance"]["ray_node_id"] for r in results}
    children = _child_runs(run_dir)
    assert sorted(c.data.tags["harness.label"] for c in children) == ["cgan", "dcgan"]
    assert all("fid" in c.data.metrics and c.info.status == "FINISHED" for c in children)


def test_cluster_run_end_to_end_as_a_ray_job_on_loopback(tmp_path, fake_cluster):
    cluster_file, dashboard = fake_cluster
    shared = tmp_path / "shared"
    run_dir = tmp_path / "runs" / "smoke" / "loopback"
    result = _cli("run", "suites/smoke.yaml", "--cluster", str(cluster_file), "--dashboard", dashboard,
                  "--storage", f"file://{shared}", "--run-dir", str(run_dir), timeout=480)
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
    # MLflow was written by the job's driver into its own run directory and came back with the run: its artifacts
    # resolve here (the store was re-pointed from the job's path)
    from harness import tracking as tr

    children = _child_runs(run_dir)
    assert len(children) == 2 and all("fid" in c.data.metrics for c in children)
    client = tr.client_for(tr.default_tracking_uri(run_dir))
    local = Path(client.download_artifacts(children[0].info.run_id, "result.json", str(tmp_path)))
    assert json.loads(local.read_text())["trial_id"] == children[0].data.tags[tr.TRIAL_ID_TAG]
    # the same command again: the stored run is resumed, nothing is trained twice
    again = _cli("run", "suites/smoke.yaml", "--cluster", str(cluster_file), "--dashboard", dashboard,
                 "--storage", f"file://{shared}", "--run-dir", str(run_dir), timeout=300)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert "2 trials, 2 already finished" in again.stdout + again.stderr
    assert len(_child_runs(run_dir)) == 2  # no duplicate child runs
