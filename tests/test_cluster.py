"""The cluster configs, and sweeps on a real multi-node Ray cluster.

- ``cluster.yaml`` (AWS) and ``cluster.local.yaml`` (on-premise) pass the validation ``ray up``
  applies before it talks to any cloud (``prepare_config`` then ``validate_config``), offline;
  their heads run no trials, their workers have GPUs, and they agree on setup and storage.
- A two-node Ray cluster on this machine (two ``ray start``: a head and a second node, each with
  its own temp dir and 1 CPU) runs a sweep driven by ``hoyersweep run --address`` in a
  subprocess, so this test process never joins a cluster: the trials run on both nodes.
- The same cluster loses its second node mid-sweep (its raylet, then all its other processes,
  are SIGKILLed): the sweep retries the trial that was running there on the head, from its
  checkpoint, and still finishes every trial, with the ledger, Optuna and MLflow all agreeing.

Every process these tests start lives in a session of its own (``start_new_session``); teardown
stops exactly the processes of those sessions, by PID (SIGTERM, then SIGKILL).  Never Ray's own stop-all
command, which would stop every Ray on the machine.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from trainables.contract import tracking_uri_of

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"cluster.yaml": "aws", "cluster.local.yaml": "local"}
SHARED = "/mnt/shared"
RAY_CLI = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")

# ---------------------------------------------------------------------------------------------
# The cluster-launcher configs
# ---------------------------------------------------------------------------------------------


def load_config(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())


def prepared(name: str) -> dict:
    """The config as ``ray up`` sees it after filling in defaults, validated by Ray."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(copy.deepcopy(load_config(name)))
    validate_config(config)
    return config


def head_start_command(config: dict) -> list[str]:
    """The ``ray start --head`` command of a config, as arguments."""
    commands = [shlex.split(c.split(";")[-1]) for c in config["head_start_ray_commands"]]
    return next(c for c in commands if "start" in c and "--head" in c)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_passes_ray_validation(name: str) -> None:
    config = prepared(name)
    assert config["provider"]["type"] == CONFIGS[name]
    assert config["head_node_type"] in config["available_node_types"]


def test_validation_rejects_a_broken_config() -> None:
    """The check above has teeth: a misspelt key or a fractional node resource fails it."""
    from jsonschema import ValidationError
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load_config("cluster.yaml")
    misspelt = {**copy.deepcopy(config), "setup_command": []}
    with pytest.raises(ValidationError):
        validate_config(prepare_config(misspelt))
    fractional = copy.deepcopy(config)
    fractional["available_node_types"]["gpu_worker"]["resources"]["GPU"] = 0.5
    with pytest.raises(ValidationError):
        validate_config(prepare_config(fractional))


def test_aws_head_runs_no_trials_and_workers_have_gpus() -> None:
    config = prepared("cluster.yaml")
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and head["resources"].get("GPU", 0) == 0
    assert head["max_workers"] == 0
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    assert workers, "no worker node type"
    for name, worker in workers.items():
        assert worker["resources"].get("GPU", 0) >= 1, f"{name} has no GPU"
        assert worker["resources"].get("CPU", 0) >= 1, f"{name} has no CPU"
        assert 0 <= worker.get("min_workers", 0) <= worker["max_workers"] <= config["max_workers"]
    head_command = head_start_command(config)
    assert "--num-cpus=0" in head_command and "--num-gpus=0" in head_command


def test_local_head_runs_no_trials() -> None:
    """An on-prem cluster has one node type, so the head's ``ray start`` must hide its CPUs/GPUs."""
    config = prepared("cluster.local.yaml")
    assert config["provider"]["head_ip"] and config["provider"]["worker_ips"]
    head_command = head_start_command(config)
    assert "--num-cpus=0" in head_command and "--num-gpus=0" in head_command
    for command in config["worker_start_ray_commands"]:
        assert "--num-gpus=0" not in command and "--num-cpus=0" not in command


@pytest.mark.parametrize("name", CONFIGS)
def test_config_installs_the_project_and_mounts_shared_storage(name: str) -> None:
    import ray

    config = load_config(name)
    assert Path(config["file_mounts"]["~/hoyersweep"]) == Path("."), "the project is copied from the repository root"
    setup = config["setup_commands"]
    host = config.get("initialization_commands", []) + setup  # with docker the host mounts, the container sees it
    assert any(f"mountpoint -q {SHARED} ||" in c and f" {SHARED}" in c for c in host), "no shared storage mounted"
    if "docker" in config:
        assert f"-v {SHARED}:{SHARED}" in config["docker"]["run_options"], "the container does not see the storage"
        assert f"rayproject/ray:{ray.__version__}-" in config["docker"]["image"], "the image must pin this Ray"
    assert any("pip install" in c and "-e ~/hoyersweep" in c for c in setup), "the project is not installed"
    assert any("pip install" in c and "torch" in c for c in setup), "torch is not installed"
    assert any(f'"ray[default,tune]=={ray.__version__}"' in c for c in setup), (
        f"nodes must run this Ray ({ray.__version__})"
    )
    for command in [*setup, *config["head_start_ray_commands"], *config["worker_start_ray_commands"]]:
        checked = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
        assert checked.returncode == 0, f"{name}: not valid bash: {command}\n{checked.stderr}"


def test_configs_share_their_setup() -> None:
    """The on-prem config differs from the AWS one in where storage comes from, not in the install."""

    def install(name: str) -> list[str]:
        return [c for c in load_config(name)["setup_commands"] if "pip install" in c]

    assert install("cluster.yaml") == install("cluster.local.yaml")


def test_gpu_spec_fits_the_gpu_workers() -> None:
    """The GPU sweep's trial resources fit a worker node and its paths are on the shared storage."""
    from sweeps.spec import load_spec

    path = REPO / "sweeps" / "cifar10_resnet56_group.yaml"
    if not path.exists():
        pytest.skip("no GPU sweep spec")
    spec, _ = load_spec(path)
    config = prepared("cluster.yaml")
    worker = config["available_node_types"]["gpu_worker"]
    per_node = min(worker["resources"]["CPU"] // spec.resources.cpus, worker["resources"]["GPU"] // spec.resources.gpus)
    assert per_node >= 1, "a trial does not fit on a GPU worker"
    assert spec.budget.max_concurrent_trials <= per_node * worker["max_workers"]
    assert spec.storage.startswith(f"{SHARED}/") and (spec.data_dir or SHARED).startswith(f"{SHARED}/")


# ---------------------------------------------------------------------------------------------
# A real two-node Ray cluster on this machine
# ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_state(pid: int) -> tuple[str, int] | None:
    """(state, session id) of a process from /proc, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) ": state ppid pgrp session ...
        return fields[0], int(fields[3])
    except (OSError, ValueError, IndexError):  # gone, or caught half-way through exiting
        return None


def session_pids(sid: int) -> list[int]:
    """The live (not zombie) processes of session ``sid``."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (state := proc_state(int(entry))) and state[1] == sid and state[0] not in "ZXx":
            pids.append(int(entry))
    return pids


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def stop_session(sid: int, grace_s: float = 2.0) -> list[int]:
    """Stop every process of a session this test started, by PID: SIGTERM, then SIGKILL.

    Returns the PIDs still alive afterwards (none, normally)."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0), (signal.SIGKILL, 5.0)):
        pids = session_pids(sid)
        if not pids:
            return []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while session_pids(sid) and time.monotonic() < deadline:
            time.sleep(0.1)
    return session_pids(sid)


def json_lines(path: Path) -> list[dict]:
    """The complete lines of a JSON-lines file another process is appending to."""
    try:
        text = path.read_text()
    except OSError:
        return []
    rows = []
    for line in text.split("\n")[:-1]:  # the last piece is empty, or a line still being written
        with contextlib.suppress(json.JSONDecodeError):
            rows.append(json.loads(line))
    return rows


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as error:
        return f"({error})"


@dataclass
class RayNode:
    """One ``ray start`` of this test: its temp dir and the session all its processes share."""

    name: str
    temp_dir: Path
    sid: int
    start_log: Path

    @property
    def session_dir(self) -> Path:
        return self.temp_dir / "session_latest"

    @property
    def logs_dir(self) -> Path:
        return self.session_dir / "logs"

    def ran(self, trial_id: str) -> bool:
        """Whether Ray Tune started trial ``trial_id`` on this node.

        Tune gives every trial a working folder, made by the trial's actor in the Ray session
        folder of the node it runs on: ``artifacts/<time>/<experiment>/working_dirs/<trial>``."""
        return any(f"_{trial_id}_" in d.name for d in self.session_dir.glob("artifacts/*/*/working_dirs/*"))

    def raylet_pid(self) -> int | None:
        for pid in session_pids(self.sid):
            command = cmdline(pid)
            if command and Path(command[0]).name == "raylet" and str(self.temp_dir) in " ".join(command):
                return pid
        return None

    def spawned(self, pid: int) -> bool:
        """Whether this node's raylet started worker process ``pid`` (alive now, or not).

        A live process is asked directly (its session); one that has exited is known by its
        worker log files, which Ray names after the PID, in this node's own logs folder."""
        state = proc_state(pid)
        if state is not None and state[1] == self.sid:
            return True
        return any(self.logs_dir.glob(f"worker-*-{pid}.out")) or any(
            self.logs_dir.glob(f"python-core-worker-*_{pid}.log")
        )

    def report(self) -> str:
        parts = [f"--- node {self.name} ({self.temp_dir}): ray start output\n{tail(self.start_log, 15)}"]
        for log in ("gcs_server.out", "gcs_server.err", "raylet.out", "raylet.err"):
            if (self.logs_dir / log).exists():
                parts.append(f"--- node {self.name}: {log}\n{tail(self.logs_dir / log, 15)}")
        for err in sorted(self.logs_dir.glob("worker-*.err"))[-4:]:
            if err.stat().st_size:
                parts.append(f"--- node {self.name}: {err.name}\n{tail(err, 15)}")
        return "\n".join(parts)


@dataclass
class Driver:
    """A ``hoyersweep run`` subprocess (in a session of its own) and where its output goes."""

    process: subprocess.Popen
    log: Path
    storage: Path

    @property
    def sweep_dir(self) -> Path:
        return self.storage / "digits_quick"

    def wait(self, timeout_s: float) -> int:
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the sweep did not finish within {timeout_s:.0f}s") from None

    def ledger(self) -> list[dict]:
        return json_lines(self.sweep_dir / "results.jsonl")


@dataclass
class LocalRayCluster:
    """A Ray head and a second node on this machine, 1 CPU each, with a token of their own."""

    nodes: list[RayNode] = field(default_factory=list)
    drivers: list[Driver] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
        self.env.update(
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN=secrets.token_hex(32),  # this cluster's own token: nothing else can join it
            RAY_USAGE_STATS_ENABLED="0",
            PYTHONUNBUFFERED="1",
        )
        # short, private temp dirs: Ray puts unix sockets in them (paths are limited to ~107 bytes)
        self.base = Path(tempfile.mkdtemp(prefix="hsray-", dir="/tmp" if Path("/tmp").is_dir() else None))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def head(self) -> RayNode:
        return self.nodes[0]

    @property
    def second(self) -> RayNode:
        return self.nodes[1]

    def start(self) -> None:
        self._start_node(
            "head",
            "--head",
            f"--port={self.port}",
            "--include-dashboard=false",
            f"--dashboard-port={free_port()}",
        )
        self._start_node("second", f"--address={self.address}")

    def _start_node(self, name: str, *arguments: str) -> RayNode:
        temp_dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.base))
        start_log = temp_dir / "ray-start.log"
        command = [
            RAY_CLI,
            "start",
            *arguments,
            "--num-cpus=1",
            "--num-gpus=0",
            f"--temp-dir={temp_dir}",
            f"--dashboard-agent-listen-port={free_port()}",
            "--disable-usage-stats",
        ]
        with start_log.open("w") as out:
            process = subprocess.Popen(
                command,
                env=self.env,
                cwd=temp_dir,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        node = RayNode(name, temp_dir, process.pid, start_log)
        self.nodes.append(node)  # before waiting: teardown stops whatever it started
        try:
            code = process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"`ray start` of the {name} node hung") from None
        if code != 0 or node.raylet_pid() is None:
            raise RuntimeError(f"`ray start` of the {name} node failed (exit {code})")
        return node

    def trial_results(self) -> dict[str, list[dict]]:
        """Each Ray trial's results so far, by Ray trial id, as the driver received them.

        Read from the ``result.json`` Tune's driver writes (and flushes) per result in its staging
        folder, inside the Ray session folder of the node the driver attached to: the head
        (Ray prefers the head among several nodes on one host).  The copies under the sweep's
        ``ray/`` folder are synced from there now and then, so they can lag or be missing."""
        results: dict[str, list[dict]] = {}
        for path in self.head.session_dir.glob("artifacts/*/*/driver_artifacts/*/result.json"):
            if rows := json_lines(path):
                results[rows[0]["trial_id"]] = rows
        return results

    def sweep(self, storage: Path, num_samples: int, *settings: str) -> Driver:
        """Start ``hoyersweep run`` of the digits spec against this cluster, in a subprocess."""
        storage.mkdir(parents=True, exist_ok=True)
        log = storage.parent / f"driver-{len(self.drivers)}.log"
        command = [
            sys.executable,
            "-m",
            "sweeps.cli",
            "run",
            "sweeps/digits_quick.yaml",
            "--address",
            self.address,
            "--storage",
            str(storage),
            "--num-samples",
            str(num_samples),
            "--max-concurrent-trials",
            "2",
            "--set",
            "resources.cpus=1",
            "--set",
            "resources.gpus=0",
            "--set",
            "warm_start=false",
        ]
        for setting in settings:
            command += ["--set", setting]
        with log.open("w") as out:
            process = subprocess.Popen(
                command,
                cwd=REPO,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        driver = Driver(process, log, storage)
        self.drivers.append(driver)
        return driver

    def report(self) -> str:
        parts = [f"=== cluster at {self.address}"]
        for driver in self.drivers:
            parts.append(
                f"--- driver {shlex.join(driver.process.args)} (exit {driver.process.poll()})\n{tail(driver.log, 60)}"
            )
        parts += [node.report() for node in self.nodes]
        return "\n".join(parts)

    @contextlib.contextmanager
    def explained(self) -> Iterator[None]:
        """On any failure inside, print the driver's output and the nodes' log tails."""
        try:
            yield
        except BaseException:
            print(self.report(), file=sys.stderr)
            raise

    def teardown(self) -> None:
        survivors = []
        for driver in self.drivers:
            survivors += stop_session(driver.process.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                driver.process.wait(timeout=5)
        for node in reversed(self.nodes):
            survivors += stop_session(node.sid)
        shutil.rmtree(self.base, ignore_errors=True)
        assert not survivors, f"processes this test started are still running: {survivors}"


@pytest.fixture
def ray_cluster() -> Iterator[LocalRayCluster]:
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs Linux /proc to keep track of the Ray processes it starts")
    if RAY_CLI is None:
        pytest.skip("no `ray` command")
    cluster = LocalRayCluster()
    try:
        with cluster.explained():
            cluster.start()
        yield cluster
    finally:
        cluster.teardown()


def wait_for(condition, timeout_s: float, what: str, driver: Driver | None = None, interval_s: float = 0.2):
    """Poll ``condition`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := condition():
            return value
        if driver is not None and driver.process.poll() is not None:
            raise AssertionError(f"the sweep ended (exit {driver.process.returncode}) before {what}")
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def node_of(cluster: LocalRayCluster, pid: int) -> str | None:
    names = [node.name for node in cluster.nodes if node.spawned(pid)]
    assert len(names) <= 1, f"pid {pid} claimed by nodes {names}"
    return names[0] if names else None


def check_records(driver: Driver, num_samples: int) -> None:
    """Ledger, Optuna study and MLflow runs all hold exactly the sweep's trials, all finished ok."""
    import optuna
    from mlflow.tracking import MlflowClient

    ledger = driver.ledger()
    assert sorted(row["trial_number"] for row in ledger) == list(range(num_samples))
    assert [row["status"] for row in ledger] == ["ok"] * num_samples, [row.get("message") for row in ledger]
    state = json.loads((driver.sweep_dir / "state.json").read_text())
    assert state["status"] == "finished"

    study = optuna.load_study(study_name=state["study_name"], storage=f"sqlite:///{driver.sweep_dir / 'optuna.db'}")
    states = [trial.state for trial in study.get_trials(deepcopy=False)]
    assert states == [optuna.trial.TrialState.COMPLETE] * num_samples

    client = MlflowClient(tracking_uri_of(driver.sweep_dir))
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, max_results=1000)
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    assert len(children) == num_samples
    assert {run.info.status for run in children} == {"FINISHED"}
    assert [run.info.status for run in parents] == ["FINISHED"]


def test_sweep_runs_on_both_nodes(ray_cluster: LocalRayCluster, tmp_path: Path) -> None:
    """Two 1-CPU nodes, trials of 1 CPU, 2 at a time: the trials run on both nodes."""
    num_samples = 4
    with ray_cluster.explained():
        driver = ray_cluster.sweep(tmp_path / "results", num_samples, "trial.epochs=20", "trial.finetune_epochs=2")
        assert driver.wait(timeout_s=150) == 0
        check_records(driver, num_samples)
        placement = {
            row["ray_trial_id"]: {node.name for node in ray_cluster.nodes if node.ran(row["ray_trial_id"])}
            for row in driver.ledger()
        }
        assert all(len(nodes) == 1 for nodes in placement.values()), placement
        assert set().union(*placement.values()) == {"head", "second"}, placement
        # the results the driver received say the same: they came from processes of those nodes
        results = ray_cluster.trial_results()
        assert results.keys() == placement.keys()
        for trial_id, rows in results.items():
            assert {node_of(ray_cluster, row["pid"]) for row in rows} == placement[trial_id], trial_id


def test_sweep_survives_losing_a_node(ray_cluster: LocalRayCluster, tmp_path: Path) -> None:
    """The second node dies (SIGKILL) while it runs a trial: the head finishes the sweep.

    The raylet is killed first, then every other process of that node (its trial worker, agents,
    log monitor), as when a machine is lost: a worker left alive could otherwise still finish
    its trial, since the driver talks to it directly."""
    num_samples = 5
    with ray_cluster.explained():
        driver = ray_cluster.sweep(
            tmp_path / "results", num_samples,
            "trial.epochs=40", "trial.finetune_epochs=2", "max_failures=3", "checkpoint_interval_s=1",
        )  # fmt: skip
        second = ray_cluster.second

        def checkpointed_trial_on_second_node() -> str | None:
            ledger = driver.ledger()
            if not ledger:
                return None  # mid-sweep: one trial already finished and recorded
            finished = {row["ray_trial_id"] for row in ledger}
            for trial_id, rows in ray_cluster.trial_results().items():
                pid = rows[-1]["pid"]
                if trial_id in finished or rows[-1].get("final") or proc_state(pid) is None or not second.spawned(pid):
                    continue
                if any(row.get("checkpoint_dir_name") for row in rows):  # a checkpoint the driver has registered
                    return trial_id
            return None

        victim = wait_for(
            checkpointed_trial_on_second_node, 90, "a trial with a checkpoint running on the second node", driver
        )
        raylet = second.raylet_pid()
        assert raylet is not None
        os.kill(raylet, signal.SIGKILL)
        for pid in session_pids(second.sid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

        assert driver.wait(timeout_s=150) == 0
        assert session_pids(second.sid) == []
        check_records(driver, num_samples)
        assert any(row["ray_trial_id"] == victim for row in driver.ledger())
        # the interrupted trial was retried on the head, from the checkpoint it left on the storage
        assert second.ran(victim) and ray_cluster.head.ran(victim)
        results = ray_cluster.trial_results()
        nodes = [node_of(ray_cluster, row["pid"]) for row in results[victim]]
        assert nodes[0] == "second" and nodes[-1] == "head" and results[victim][-1].get("final"), nodes
        retried = [row for row, node in zip(results[victim], nodes) if node == "head"]
        assert nodes == ["second"] * (len(nodes) - len(retried)) + ["head"] * len(retried), nodes
        # the retry loaded a checkpoint and went on after it; when the kill came after the last
        # epoch's checkpoint, the retry's only result is the final one (it has no epoch of its own)
        resumed = results[victim][-1].get("resumed_from_epoch")
        assert resumed is not None and resumed >= 1, "the retry started again from scratch, not from its checkpoint"
        retried_epochs = [row["epoch"] for row in retried if "epoch" in row]
        assert all(epoch > resumed for epoch in retried_epochs), (resumed, retried_epochs)
        # no other trial was interrupted: each ran on one node
        for row in driver.ledger():
            if row["ray_trial_id"] != victim:
                assert sum(node.ran(row["ray_trial_id"]) for node in ray_cluster.nodes) == 1, row["ray_trial_id"]
