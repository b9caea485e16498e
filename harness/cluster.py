"""``harness run SUITE --cluster FILE``: run a suite on a Ray cluster described by a cluster-launcher YAML.

1. FILE is validated here first, with Ray's own schema plus the checks Ray leaves to launch time (head type among the
   node types, worker min ≤ max, ports): every problem is named with the file and field before anything starts.
2. ``--up`` brings the cluster up (``ray.autoscaler.sdk.create_or_update_cluster``, what ``ray up`` does).
3. The run is submitted to the head as a **Ray Job** (``JobSubmissionClient`` on the dashboard port): the working
   directory is this project (package, suites; ``.venv``, ``runs/``, data and stores excluded), the entry point is
   ``python -m harness run SUITE --address auto [--storage URI] --run-dir ...``. The job's driver writes MLflow into
   its run directory (a tracking server only if one is named, passed as ``MLFLOW_TRACKING_URI``): trials report to
   it, so worker nodes need no MLflow access. Storage and a tracking server may be given in the cluster file itself,
   under Ray's user-data field ``metadata: {fewshot_harness: {storage: ..., tracking_uri: ...}}`` (flags win).
   Token authentication (Ray ≥ 2.52) is honoured by the client as by ``ray job submit``:
   ``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH`` / ``~/.ray/auth_token``.
4. The job's logs are streamed here; the exit status is the job's. Ctrl+C detaches (the job goes on) and prints how
   to follow or stop it. When the job ends, the run is copied from shared storage into the local run directory (its
   MLflow store re-pointed at the artifacts' new place). A cluster whose nodes share this disk (the fake multi-node
   provider) needs no storage: the job writes the local run directory itself.

The dashboard address is ``--dashboard URL`` if given, else ``http://<head IP>:<port>`` with the port from the head's
``ray start --dashboard-port`` in FILE (default 8265). The dashboard accepts Ray Jobs — code — from anyone who reaches
it, without a password, so ``ray_cluster.yaml`` binds it to the head's 127.0.0.1: forward it with
``ray dashboard FILE`` (SSH) and pass ``--dashboard http://127.0.0.1:8265``; the connection error says so.
"""

from __future__ import annotations

import copy
import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import pydantic
import yaml

DEFAULT_DASHBOARD_PORT = 8265
LOCAL_PROVIDERS = ("fake_multinode", "local")
# never shipped to the cluster as part of the job's working directory
JOB_EXCLUDES = [".venv", "venv", ".git", "runs", "data", "mlruns", "*.db", "ray_results", "__pycache__", "*.pt",
                "*.pth", "*.egg-info", "reports", ".pytest_cache", "tmp_*"]
TERMINAL_JOB_STATES = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 130}


METADATA_KEY = "fewshot_harness"  # under Ray's own `metadata:` (user data Ray's schema allows and ignores)


class HarnessSettings(pydantic.BaseModel):
    """The harness's settings a cluster file may carry in ``metadata.fewshot_harness``; command-line flags win."""

    model_config = pydantic.ConfigDict(extra="forbid")

    storage: Optional[str] = pydantic.Field(None, description="shared storage URI (as --storage)")
    tracking_uri: Optional[str] = pydantic.Field(None, description="an MLflow server (as --tracking-uri)")


class ClusterConfigError(ValueError):
    """A cluster YAML that cannot be used; ``problems`` are ``(field path, message)`` pairs."""

    def __init__(self, file: str, problems: list[tuple[str, str]]):
        self.file, self.problems = file, problems
        super().__init__("\n".join(f"{file}: {loc}: {msg}" if loc else f"{file}: {msg}" for loc, msg in problems))


@dataclass(frozen=True)
class ClusterFile:
    path: Path
    config: dict[str, Any]

    @property
    def name(self) -> str:
        return self.config["cluster_name"]

    @property
    def provider(self) -> str:
        return self.config["provider"]["type"]

    @property
    def harness_settings(self) -> HarnessSettings:
        return HarnessSettings.model_validate((self.config.get("metadata") or {}).get(METADATA_KEY) or {})

    @property
    def shares_disk(self) -> bool:
        """Whether every node sees this machine's disk (the fake multi-node provider: its nodes are local
        processes), so trials can write the run directory itself and no shared storage is needed."""
        return self.provider == "fake_multinode"

    @property
    def ships_project(self) -> bool:
        """Whether the job gets the project as an uploaded working directory. Not with the fake multi-node provider,
        whose "nodes" are this machine: they share one session folder, and one node's runtime-env agent deletes a
        working directory another node still uses; there the project is used in place (through ``PYTHONPATH``)."""
        return self.provider != "fake_multinode"

    @property
    def max_workers(self) -> int:
        """The most worker nodes this cluster can have (0: a single-node cluster)."""
        types = self.config.get("available_node_types", {})
        per_type = sum(int(t.get("max_workers", 0)) for name, t in types.items()
                       if name != self.config.get("head_node_type"))
        return min(int(self.config.get("max_workers", per_type)), per_type) if types else int(
            self.config.get("max_workers", 0))

    def dashboard_port(self) -> int:
        """The head's ``--dashboard-port`` from ``head_start_ray_commands``, else Ray's default 8265."""
        for command in self.config.get("head_start_ray_commands") or []:
            found = re.search(r"--dashboard-port[= ](\d+)", str(command))
            if found:
                return int(found.group(1))
        return DEFAULT_DASHBOARD_PORT

    def head_ip(self) -> str:
        """The head's address: this machine for the local/fake providers, else asked from the provider (like
        ``ray get-head-ip``; needs the provider's credentials)."""
        if self.provider == "fake_multinode":
            return "127.0.0.1"
        if self.provider == "local":
            return self.config["provider"].get("head_ip", "127.0.0.1")
        from ray.autoscaler.sdk import get_head_node_ip

        return get_head_node_ip(str(self.path))

    def dashboard_url(self, override: str | None = None) -> str:
        if override:
            return override if "://" in override else f"http://{override}"
        return f"http://{self.head_ip()}:{self.dashboard_port()}"


def _schema_problems(config: dict[str, Any]) -> list[tuple[str, str]]:
    """Every violation of Ray's cluster-config schema (Ray's ``validate_config`` stops at the first)."""
    import json

    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    problems = []
    for error in sorted(jsonschema.Draft7Validator(schema).iter_errors(config), key=lambda e: list(e.path)):
        problems.append((".".join(str(p) for p in error.path), error.message))
    return problems


def load_cluster_file(path: str | Path) -> ClusterFile:
    """Read and check a Ray cluster-launcher YAML; :class:`ClusterConfigError` lists every problem at once."""
    path = Path(path)
    file = str(path)
    if not path.is_file():
        raise ClusterConfigError(file, [("", "no such file")])
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ClusterConfigError(file, [("", f"not valid YAML: {exc}")]) from None
    if not isinstance(config, dict):
        raise ClusterConfigError(file, [("", "expected a mapping (a Ray cluster-launcher config)")])
    problems: list[tuple[str, str]] = []
    for key in ("cluster_name", "provider"):
        if key not in config:
            problems.append((key, "required"))
    provider = config.get("provider")
    if isinstance(provider, dict) and "type" not in provider:
        problems.append(("provider.type", "required (aws, gcp, azure, local, fake_multinode, ...)"))
    if problems:
        raise ClusterConfigError(file, problems)

    problems += _schema_problems(config)
    types = config.get("available_node_types")
    head = config.get("head_node_type")
    if types is not None and isinstance(types, dict):
        if head is None:
            problems.append(("head_node_type", "required with available_node_types"))
        elif head not in types:
            problems.append(("head_node_type", f"{head!r} is not one of available_node_types ({', '.join(types)})"))
        for name, node_type in types.items():
            if not isinstance(node_type, dict):
                continue
            lo, hi = node_type.get("min_workers", 0), node_type.get("max_workers")
            if isinstance(lo, int) and isinstance(hi, int) and lo > hi:
                problems.append((f"available_node_types.{name}", f"min_workers {lo} > max_workers {hi}"))
    settings = (config.get("metadata") or {}).get(METADATA_KEY) if isinstance(config.get("metadata"), dict) else None
    if settings is not None:
        try:
            HarnessSettings.model_validate(settings)
        except pydantic.ValidationError as exc:
            for error in exc.errors():
                loc = ".".join(str(p) for p in ("metadata", METADATA_KEY, *error["loc"]))
                problems.append((loc, error["msg"]))
    if not problems and provider["type"] not in LOCAL_PROVIDERS:
        # Ray's defaults for the provider (as `ray up` merges them); catches e.g. unknown provider types
        from ray.autoscaler._private.util import prepare_config, validate_config

        try:
            validate_config(prepare_config(copy.deepcopy(config)))
        except Exception as exc:  # noqa: BLE001 - Ray raises many types here
            problems.append(("", f"Ray rejects it: {type(exc).__name__}: {exc}"))
    if problems:
        raise ClusterConfigError(file, problems)
    return ClusterFile(path, config)


def cluster_up(cluster: ClusterFile) -> None:
    """What ``ray up -y FILE`` does. The fake multi-node provider is started with ``ray start`` instead."""
    if cluster.provider == "fake_multinode":
        raise ClusterConfigError(str(cluster.path), [("provider.type", (
            "a fake multi-node cluster is not brought up with `ray up`; start it in another shell with "
            f"`RAY_FAKE_CLUSTER=1 ray start --head --block --num-cpus=0 --port=PORT "
            f"--dashboard-port={cluster.dashboard_port()} --autoscaling-config={cluster.path}` (PORT as in "
            "provider.gcs_address)"))])
    from ray.autoscaler.sdk import create_or_update_cluster

    create_or_update_cluster(str(cluster.path), no_restart=False, restart_only=False, no_config_cache=True)


def project_root(start: Path | None = None) -> Path:
    """The folder with ``pyproject.toml`` holding the harness package: shipped as the job's working directory."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "harness" / "__init__.py").is_file():
            return folder
    package = Path(__file__).resolve().parent.parent
    if (package / "pyproject.toml").is_file():
        return package
    raise FileNotFoundError("cannot find the project (pyproject.toml beside harness/) to ship as the job's working "
                            "directory; run from the project folder")


@dataclass(frozen=True)
class JobRequest:
    entrypoint: str
    runtime_env: dict[str, Any]
    metadata: dict[str, str]


def job_request(suite_file: Path, *, root: Path, storage: str | None, run_dir: str, command: str = "run",
                tracking: bool = True, tracking_uri: str | None = None, extra_args: list[str] = (),
                ship_project: bool = True) -> JobRequest:
    """The Ray Job that runs ``harness <command>`` on the head against the cluster it runs in.

    ``ship_project=False`` (see :attr:`ClusterFile.ships_project`): the job and its trials import the project in place
    through ``PYTHONPATH`` instead of from an uploaded working directory."""
    suite_file = Path(suite_file).resolve()
    try:
        suite_rel = suite_file.relative_to(root)
    except ValueError:
        raise FileNotFoundError(f"{suite_file} is outside the project {root}, which is what the cluster receives; "
                                "put the suite under the project (e.g. suites/)") from None
    suite_arg = (suite_rel if ship_project else suite_file).as_posix()
    args = ["python", "-m", "harness", command, suite_arg, "--address", "auto",
            *(["--storage", storage] if storage else []), "--run-dir", run_dir, "--no-progress", *extra_args]
    env = {"PYTHONUNBUFFERED": "1"}
    if not tracking:
        args.append("--no-tracking")
    elif tracking_uri:  # else the job's driver tracks into its run directory, which comes back with the run
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    if ship_project:
        runtime_env = {"working_dir": str(root), "excludes": JOB_EXCLUDES, "env_vars": env}
        entrypoint = shlex.join(args)
    else:
        runtime_env = {"env_vars": {**env, "PYTHONPATH": str(root)}}
        entrypoint = f"cd {shlex.quote(str(root))} && {shlex.join(args)}"
    return JobRequest(
        entrypoint=entrypoint,
        runtime_env=runtime_env,
        metadata={"harness_suite": suite_rel.as_posix(), "harness_run_dir": run_dir},
    )


def submit_and_follow(dashboard: str, request: JobRequest, *, echo: Callable[[str], None] = print,
                      poll_s: float = 1.0, submit_wait_s: float = 120.0) -> tuple[str, int]:
    """Submit the job (waiting up to ``submit_wait_s`` for a head whose job agent is still starting), stream its
    logs through ``echo`` until it ends; ``(job id, exit status)``."""
    import asyncio

    from ray.job_submission import JobSubmissionClient

    try:
        client = JobSubmissionClient(dashboard)
    except Exception as exc:  # noqa: BLE001 - connection, auth and version errors all land here
        raise ConnectionError(
            f"cannot reach the Ray dashboard at {dashboard}: {exc}. A head started with `--dashboard-host=127.0.0.1` "
            "(ray_cluster.yaml: the dashboard runs any job it is sent, so it is not exposed) is reached through SSH: "
            "run `ray dashboard CLUSTER_FILE` in another shell and pass --dashboard http://127.0.0.1:8265") from None
    deadline = time.monotonic() + submit_wait_s
    while True:
        try:
            job_id = client.submit_job(entrypoint=request.entrypoint, runtime_env=request.runtime_env,
                                       metadata=request.metadata)
            break
        except RuntimeError as exc:  # a head that just started answers 500 until its job agent is up
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise ConnectionError(f"the Ray dashboard at {dashboard} refused the job: {exc}") from None
            time.sleep(2)
    echo(f"submitted Ray Job {job_id} to {dashboard}")

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            for line in lines.splitlines():
                echo(line)

    try:
        asyncio.run(tail())
        while (status := str(client.get_job_status(job_id)).split(".")[-1]) not in TERMINAL_JOB_STATES:
            time.sleep(poll_s)
    except KeyboardInterrupt:
        echo(f"detached; the job goes on. Follow: ray job logs -f {job_id} --address {dashboard}; "
             f"stop: ray job stop {job_id} --address {dashboard}")
        return job_id, 130
    info = client.get_job_info(job_id)
    if status != "SUCCEEDED":
        echo(f"Ray Job {job_id} {status}: {info.message or ''}")
    exit_code = getattr(info, "driver_exit_code", None)  # the harness's own status (1: a trial failed, 2: bad input)
    return job_id, int(exit_code) if exit_code is not None else TERMINAL_JOB_STATES[status]
