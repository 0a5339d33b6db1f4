"""The rendered chart, run: the coordinator's and a worker's args and env taken from the
rendered StatefulSet and Deployment, their volumes made temporary folders, the Services'
names mapped to loopback ports, a real etcd, the real `flotilla` binary. The worker must
register through etcd under its pod name and a small sweep must run on it; with mutual TLS
the worker must join with the TLS files the chart mounts.

Needs target/debug/flotilla (or FLOTILLA_BIN), etcd (PATH, /usr/bin/etcd or
FLOTILLA_ETCD_BIN) and the demo models in $FLOTILLA_HOME/models (scripts/fetch-models.sh);
it fails, never skips, without them.

With FLOTILLA_IMAGE set (scripts/test-images.sh) the coordinator, the worker and the CLI run
in that container image instead, as the chart's securityContext says (its user and group,
read-only root file system, no capabilities, no privilege escalation), each volume mounted
at the chart's mount path, on the host's network. FLOTILLA_PODMAN is the podman command
(default `podman`; scripts/images/podman.sh adapts it to sandboxes that refuse its
defaults)."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from chartlib import NAMESPACE, REPO, by_component, container, find, objects, render

BIN = Path(os.environ.get("FLOTILLA_BIN", REPO / "target" / "debug" / "flotilla"))
ETCD = os.environ.get("FLOTILLA_ETCD_BIN") or shutil.which("etcd") or "/usr/bin/etcd"
MODELS = Path(os.environ.get("FLOTILLA_HOME", Path.home() / ".cache" / "flotilla")) / "models"
IMAGE = os.environ.get("FLOTILLA_IMAGE")
PODMAN = shlex.split(os.environ.get("FLOTILLA_PODMAN", "podman"))
CONTAINERS = itertools.count()
POD = "demo-flotilla-worker-cpu-7d9f8b6c5d-x2x4q"
VALUES = {"workers": {"pools": [{"name": "cpu", "replicas": 1, "threads": 1}]},
          "coordinator": {"heartbeatTimeoutSeconds": 20}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what: str, seconds: float, check, logs=lambda: ""):
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{logs()}")
        time.sleep(0.25)


class Pod:
    """One container of a rendered workload as a local process (or, with FLOTILLA_IMAGE, as
    a container): each volume mount becomes a folder (Secret volumes filled with the Secret's
    data), hosts and ports are mapped; a process also sees mount paths mapped to the folders."""

    def __init__(self, workload: dict, secrets: dict[str, dict], root: Path,
                 replace: list[tuple[str, str]], pod_name: str) -> None:
        self.name = workload["metadata"]["name"]
        # Two runs of the chart can overlap (the module's cluster and a test's own).
        self.container_name = f"{self.name}-{os.getpid()}-{next(CONTAINERS)}"
        self.container = container(workload)
        self.pod_security = workload["spec"]["template"]["spec"].get("securityContext", {})
        self.dir = root / self.name
        self.replace = list(replace)
        volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"].get("volumes", [])}
        self.mounts = {}
        self.read_only = set()
        self.extra_mounts: list[tuple[Path, str]] = []
        for mount in self.container["volumeMounts"]:
            local = self.dir / mount["name"]
            local.mkdir(parents=True, exist_ok=True)
            secret = volumes.get(mount["name"], {}).get("secret")
            if secret:
                data = secrets[secret["secretName"]]["data"]
                for key, value in data.items():
                    (local / key).write_bytes(base64.b64decode(value))
            self.mounts[mount["mountPath"]] = local
            if mount.get("readOnly"):
                self.read_only.add(mount["mountPath"])
            if not IMAGE:
                self.replace.append((mount["mountPath"], str(local)))
        # Longest first, so /models/flotilla maps through /models, not a shorter match.
        self.replace.sort(key=lambda pair: -len(pair[0]))
        self.env = {} if IMAGE else {"PATH": os.environ["PATH"],
                                     "HOME": str(self.mounts["/home/flotilla"])}
        for e in self.container.get("env", []):
            if "value" in e:
                self.env[e["name"]] = self.localize(e["value"])
            else:
                assert e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name", e
                self.env[e["name"]] = pod_name
        # Kubernetes expands $(VAR) in args from the container's env.
        self.args = [re.sub(r"\$\((\w+)\)", lambda m: self.env[m.group(1)], self.localize(a))
                     for a in self.container["args"]]
        self.proc: subprocess.Popen | None = None
        self.log = self.dir / "log"

    def localize(self, text: str) -> str:
        """Every mapped host:port and mount path replaced in one pass (longest match first;
        a path only where it ends: /tmp is not the start of /tmpfoo)."""
        table = dict(self.replace)
        pattern = "|".join(re.escape(old) + (r"(?![\w.-])" if old.startswith("/") else "")
                           for old, _ in self.replace)
        return re.sub(pattern, lambda m: table[m.group(0)], text)

    def local(self, path: str) -> Path:
        """The folder behind a path inside the container (under one of its mounts)."""
        mount = max((m for m in self.mounts if path == m or path.startswith(m + "/")), key=len)
        return self.mounts[mount] / path[len(mount):].lstrip("/")

    def container_command(self) -> list[str]:
        """`podman run` as the rendered pod would run: its user, group and fsGroup, read-only
        root, dropped capabilities, no privilege escalation, its volumes at their paths."""
        sc, pod = self.container.get("securityContext", {}), self.pod_security
        user = sc.get("runAsUser", pod.get("runAsUser"))
        group = sc.get("runAsGroup", pod.get("runAsGroup", user))
        command = [*PODMAN, "run", "--rm", "--pull=never", "--name", self.container_name,
                   "--network", "host", "--stop-timeout", "20"]
        if user is not None:
            command += ["--user", f"{user}:{group}"]
        if "fsGroup" in pod:
            command += ["--group-add", str(pod["fsGroup"])]
        if sc.get("readOnlyRootFilesystem"):
            # As Kubernetes does: no tmpfs of podman's own on /tmp, /run, /var/tmp.
            command += ["--read-only", "--read-only-tmpfs=false"]
        for cap in sc.get("capabilities", {}).get("drop", []):
            command += ["--cap-drop", cap]
        if sc.get("allowPrivilegeEscalation") is False:
            command += ["--security-opt", "no-new-privileges"]
        # A volume's folder is the user's; with fsGroup, everything in it is that group's.
        owner, fs_group = (-1 if user is None else user), pod.get("fsGroup", -1)
        for path, local in self.mounts.items():
            for d in [local, *local.rglob("*")]:
                os.chown(d, owner if d == local else -1, fs_group)
            command += ["-v", f"{local}:{path}" + (":ro" if path in self.read_only else "")]
        for local, path in self.extra_mounts:
            command += ["-v", f"{local}:{path}:ro"]
        for name, value in self.env.items():
            command += ["-e", f"{name}={value}"]
        return [*command, IMAGE, *self.args]

    def start(self) -> None:
        with open(self.log, "wb") as log:
            if IMAGE:
                self.proc = subprocess.Popen(self.container_command(), cwd=self.dir,
                                             stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            else:
                self.proc = subprocess.Popen([str(BIN), *self.args], env=self.env,
                                             cwd=self.dir, stdin=subprocess.DEVNULL,
                                             stdout=log, stderr=log)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if IMAGE:
            subprocess.run([*PODMAN, "rm", "--force", "--ignore", self.container_name],
                           capture_output=True, timeout=60)

    def output(self) -> str:
        return f"--- {self.name}: {self.args}\n" + self.log.read_text(errors="replace")


class Etcd:
    def __init__(self, root: Path) -> None:
        self.port, peer = free_port(), free_port()
        client, peer_url = f"http://127.0.0.1:{self.port}", f"http://127.0.0.1:{peer}"
        self.log = root / "etcd.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [ETCD, "--name", "chart-test", "--data-dir", str(root / "etcd-data"),
                 "--listen-client-urls", client, "--advertise-client-urls", client,
                 "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
                 "--initial-cluster", f"chart-test={peer_url}", "--log-level", "warn"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        wait_until("etcd to be healthy", 30, self.healthy, lambda: self.log.read_text())

    def healthy(self) -> bool:
        assert self.proc.poll() is None, f"etcd exited: {self.log.read_text()}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1) as r:
                return b'"true"' in r.read()
        except OSError:
            return False

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


@contextlib.contextmanager
def run_chart(root: Path, values: dict, extra_secrets: dict | None = None,
              cli_flags: tuple[str, ...] = ()):
    """Renders the chart with `values` and runs its coordinator and first worker pool."""
    assert IMAGE or BIN.is_file(), \
        f"{BIN} is missing: build it first (cargo build -p flotilla-cli)"
    assert Path(ETCD).is_file(), f"{ETCD} is missing: install etcd (Debian etcd-server)"
    root.mkdir(parents=True, exist_ok=True)
    objs = objects(render(values, name="demo"))
    secrets = {s["metadata"]["name"]: s for s in find(objs, "Secret")}
    secrets.update(extra_secrets or {})
    coord = by_component(objs, "StatefulSet", "coordinator")[0]
    worker = find(objs, "Deployment")[0]
    etcd = Etcd(root)
    workloads = {"coordinator": coord, "worker": worker}
    # Every container port of each pod gets a loopback port of its own (by name and number).
    ports = {"etcd": {"client": etcd.port}}
    for component, workload in workloads.items():
        ports[component] = {}
        for port in container(workload).get("ports", []):
            ports[component][port["name"]] = ports[component][port["containerPort"]] = \
                free_port()
    replace = []
    for svc in find(objs, "Service"):
        component = svc["metadata"]["labels"]["app.kubernetes.io/component"]
        name = svc["metadata"]["name"]
        for port in svc["spec"]["ports"]:
            target = ports[component][port["targetPort"]]
            for host in (f"{name}.{NAMESPACE}.svc.cluster.local", f"{name}.{NAMESPACE}.svc",
                         name):
                replace.append((f"{host}:{port['port']}", f"127.0.0.1:{target}"))
    pods = {}
    for component, pod_name in (("coordinator", "demo-flotilla-coordinator-0"),
                                ("worker", POD)):
        binds = [(f"0.0.0.0:{port['containerPort']}",
                  f"127.0.0.1:{ports[component][port['containerPort']]}")
                 for port in container(workloads[component]).get("ports", [])]
        pods[component] = Pod(workloads[component], secrets, root, replace + binds, pod_name)
        pods[component].ports = ports[component]
    # The worker's model volume holds the demo models (FLOTILLA_HOME=/models/flotilla).
    assert (MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf").is_file(), \
        f"the demo models are not in {MODELS}: run scripts/fetch-models.sh"
    worker_home = pods["worker"].env["FLOTILLA_HOME"]
    if IMAGE:
        pods["worker"].local(worker_home + "/models").mkdir(parents=True, exist_ok=True)
        pods["worker"].extra_mounts.append((MODELS, worker_home + "/models"))
    else:
        home = Path(worker_home)
        home.mkdir(parents=True, exist_ok=True)
        (home / "models").symlink_to(MODELS, target_is_directory=True)
    token_file = next(root.glob("*/token/*"))

    def logs() -> str:
        return "\n".join(p.output() for p in pods.values()) + "\n--- etcd\n" + \
            etcd.log.read_text()

    def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        command = [*args, "--etcd", f"http://127.0.0.1:{etcd.port}",
                   "--token-file", str(token_file), *cli_flags, "--output", "json"]
        if IMAGE:
            # The image's own CLI, as its user, with the test's folder (sweep files, results,
            # TLS files) at the same path.
            share = root.parent
            command = [*PODMAN, "run", "--rm", "--pull=never", "--network", "host",
                       "-v", f"{share}:{share}",
                       "-w", str(root), IMAGE, *command]
        else:
            command = [str(BIN), *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              cwd=root)

    if IMAGE:
        # The image's CLI runs as its user over the test's folder (above): it reads what the
        # test writes there and writes its results into `root`.
        for d in [root.parent, *root.parent.rglob("*")]:
            if not d.is_symlink():
                os.chown(d, 10001, 10001)
    try:
        for p in pods.values():
            p.start()
        yield {"pods": pods, "cli": cli, "logs": logs, "root": root, "etcd": etcd}
    finally:
        for p in pods.values():
            p.stop()
        etcd.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with run_chart(tmp_path_factory.mktemp("chart-run"), VALUES) as c:
        yield c


def wait_connected(cluster) -> dict:
    def connected():
        for p in cluster["pods"].values():
            assert p.proc.poll() is None, f"{p.name} exited\n{cluster['logs']()}"
        out = cluster["cli"]("workers")
        if out.returncode != 0:
            return None
        workers = [w for w in json.loads(out.stdout) if w["worker_id"] == POD and w["connected"]]
        return workers[0] if workers else None

    return wait_until("the worker to connect", 120, connected, cluster["logs"])


def grpc_health(port: int, service: str = "") -> int | None:
    """grpc.health.v1.Health/Check over plaintext HTTP/2, as the kubelet's gRPC probe asks:
    the ServingStatus (1 = SERVING), or None when there is no answer."""
    import h2.config
    import h2.connection
    import h2.events

    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    stream = conn.get_next_available_stream_id()
    conn.send_headers(stream, [(":method", "POST"), (":scheme", "http"),
                               (":path", "/grpc.health.v1.Health/Check"),
                               (":authority", f"127.0.0.1:{port}"),
                               ("content-type", "application/grpc"), ("te", "trailers")])
    request = (b"\x0a" + bytes([len(service)]) + service.encode()) if service else b""
    conn.send_data(stream, b"\x00" + len(request).to_bytes(4, "big") + request,
                   end_stream=True)
    body, ended = b"", False
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(conn.data_to_send())
            while not ended:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                for event in conn.receive_data(chunk):
                    if isinstance(event, h2.events.DataReceived):
                        body += event.data
                        conn.acknowledge_received_data(event.flow_controlled_length, stream)
                    elif isinstance(event, h2.events.StreamEnded):
                        ended = True
                sock.sendall(conn.data_to_send())
    except OSError:
        return None
    message = body[5:]
    if not ended or len(body) < 5:
        return None
    # HealthCheckResponse { status = 1 (varint) }; an empty message is status 0 (UNKNOWN).
    return message[1] if message[:1] == b"\x08" else 0


def probe_passes(pod: Pod, probe: dict) -> bool:
    """One run of a rendered probe against the pod, judged as the kubelet judges it."""
    if "tcpSocket" in probe:
        try:
            socket.create_connection(("127.0.0.1", pod.ports[probe["tcpSocket"]["port"]]),
                                     timeout=2).close()
            return True
        except OSError:
            return False
    if "grpc" in probe:
        return grpc_health(pod.ports[probe["grpc"]["port"]],
                           probe["grpc"].get("service", "")) == 1
    if "httpGet" in probe:
        url = f"http://127.0.0.1:{pod.ports[probe['httpGet']['port']]}{probe['httpGet']['path']}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return 200 <= response.status < 400
        except OSError:
            return False
    raise AssertionError(f"{pod.name}: a probe this test cannot run: {probe}")


PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


def test_the_rendered_probes_pass_on_the_running_pods_and_readiness_means_connected(tmp_path):
    values = {**VALUES, "metrics": {"enabled": True},
              "coordinator": {**VALUES["coordinator"], "probes": {"type": "grpc"}}}
    with run_chart(tmp_path / "run", values) as c:
        wait_connected(c)
        coordinator, worker = c["pods"]["coordinator"], c["pods"]["worker"]
        assert "grpc" in coordinator.container["livenessProbe"], coordinator.container
        assert "httpGet" in worker.container["readinessProbe"], worker.container
        for pod in (coordinator, worker):
            for kind in (k for k in PROBES if k in pod.container):
                wait_until(f"{pod.name}'s {kind} to pass", 30,
                           lambda: probe_passes(pod, pod.container[kind]), c["logs"])
        # Without its coordinator a worker is alive but not ready.
        coordinator.stop()
        wait_until("the worker's readiness probe to fail", 30,
                   lambda: not probe_passes(worker, worker.container["readinessProbe"]),
                   c["logs"])
        assert probe_passes(worker, worker.container["livenessProbe"]), c["logs"]()
        assert not probe_passes(coordinator, coordinator.container["livenessProbe"])


def test_every_path_the_containers_use_is_a_mounted_volume(cluster):
    for pod in cluster["pods"].values():
        used = [a.split("=", 1)[1] for a in pod.container["args"] if "=/" in a]
        used += [e["value"] for e in pod.container.get("env", []) if e.get("value", "")
                 .startswith("/")]
        for path in used:
            assert any(path == m or path.startswith(m + "/") for m in pod.mounts), \
                f"{pod.name} uses {path}, which no volume is mounted at: {list(pod.mounts)}"


def test_the_worker_registers_under_its_pod_name(cluster):
    worker = wait_connected(cluster)
    assert worker["capabilities"]["device"] == "cpu"
    assert worker["capabilities"]["slots"] == 1
    coordinator_args = cluster["pods"]["coordinator"].args
    assert any(a.startswith("--advertise=http://127.0.0.1:") for a in coordinator_args)


def openssl(*args: str, cwd: Path) -> None:
    assert shutil.which("openssl"), "openssl is missing (Debian openssl)"
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_tls_secret(d: Path) -> dict:
    """A CA and one certificate for the coordinator's Service name, localhost and 127.0.0.1
    (where the test maps the Service), good for server and client use: the chart's Secret."""
    d.mkdir(parents=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
            "-subj", "/CN=flotilla test CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    openssl("req", *ec, "-keyout", "tls.key", "-out", "tls.csr", "-subj", "/CN=flotilla", cwd=d)
    (d / "ext.cnf").write_text(
        f"subjectAltName=DNS:demo-flotilla-coordinator.{NAMESPACE}.svc,DNS:localhost,"
        "IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n")
    openssl("x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "tls.crt", "-days", "2", "-extfile", "ext.cnf", cwd=d)
    return {"metadata": {"name": "flotilla-tls"}, "data": {
        k: base64.b64encode((d / k).read_bytes()).decode() for k in ("ca.crt", "tls.crt",
                                                                       "tls.key")}}


def test_the_worker_joins_over_mutual_tls(tmp_path):
    secret = make_tls_secret(tmp_path / "pki")
    values = {**VALUES, "coordinator": {"tls": {"secretName": "flotilla-tls",
                                                "requireClientCertificates": True}}}
    pki = tmp_path / "pki"
    with run_chart(tmp_path / "run", values, {"flotilla-tls": secret}) as plain:
        # Without a client certificate the coordinator refuses the CLI ...
        wait_until("the coordinator to listen", 60, lambda: (
            plain["pods"]["coordinator"].log.read_text().count("serving")), plain["logs"])
        refused = plain["cli"]("workers", "--tls-ca", str(pki / "ca.crt"))
        assert refused.returncode != 0, refused.stdout
        # ... and with one it sees the worker, which joined with the chart's TLS flags.
        with_cert = dict(plain, cli=lambda *a, **k: plain["cli"](
            *a, "--tls-ca", str(pki / "ca.crt"), "--tls-cert", str(pki / "tls.crt"),
            "--tls-key", str(pki / "tls.key"), **k))
        wait_connected(with_cert)
        worker_args = plain["pods"]["worker"].args
        assert any(a.startswith("--tls-cert=") for a in worker_args), worker_args


SWEEP = """name: chart
seed: 3
models: [smollm2]
variants: [query_last]
adapters: [base]
datasets:
  - name: tiny
    cases: cases.jsonl
judge:
  judges: [smollm2]
  explanation_tokens: 8
generation:
  max_tokens: 12
retrieval:
  top_k: 1
  chunk_size: 200
  chunk_overlap: 20
"""


def write_one_case_sweep(root: Path) -> Path:
    """SWEEP with its one document case written under `root`; the sweep file's path."""
    (root / "docs").mkdir(exist_ok=True)
    (root / "docs" / "ferry.txt").write_text(
        "The ferry Aurora crosses the bay six times a day. It carries 120 passengers.\n")
    (root / "cases.jsonl").write_text(json.dumps({
        "id": "ferry-trips", "task": "document", "language": "en",
        "query": "How many times a day does the Aurora cross the bay?",
        "reference_answer": "Six times a day.", "documents": ["docs/ferry.txt"]}) + "\n")
    (root / "sweep.yaml").write_text(SWEEP)
    return root / "sweep.yaml"


def test_a_small_sweep_runs_on_the_chart_configured_worker(cluster):
    wait_connected(cluster)
    root = cluster["root"]
    out = cluster["cli"]("sweep", "submit", str(write_one_case_sweep(root)))
    assert out.returncode == 0, out.stderr + cluster["logs"]()
    sweep_id = json.loads(out.stdout)["sweep_id"]
    out = cluster["cli"]("sweep", "watch", sweep_id, timeout=600)
    assert out.returncode == 0 and json.loads(out.stdout)["state"] == "succeeded", \
        out.stdout + out.stderr + cluster["logs"]()
    out = cluster["cli"]("sweep", "results", sweep_id, "--out", str(root / "results"))
    assert out.returncode == 0, out.stderr
    cases = [json.loads(line) for line in (root / "results" / "cases.jsonl").read_text()
             .splitlines() if line.strip()]
    assert len(cases) == 1 and cases[0]["error"] is None and cases[0]["verdicts"], cases
    results = json.loads((root / "results" / "results.json").read_text())
    ran = {s["worker"] for s in results["provenance"]["shards"]}
    assert ran == {POD}, ran
