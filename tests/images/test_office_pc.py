"""An office PC joins with one command: `flotilla worker install --system` inside a container
whose PID 1 is real systemd (FLOTILLA_PC_IMAGE: Debian slim with systemd, made by
scripts/test-images.sh), with the image's own binary mounted at /usr/local/bin/flotilla.
systemd must start the worker, the worker must join a coordinator and etcd on the host and run
a sweep's shards, and when the worker is killed systemd must bring it back.

Fails, never skips, without FLOTILLA_IMAGE, FLOTILLA_PC_IMAGE, podman, etcd or the models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from imagelib import BINARY, IMAGE, copy_out, podman

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "chart"))
from test_binaries import MODELS, Etcd, free_port, wait_until, write_one_case_sweep  # noqa: E402

PC_IMAGE = os.environ.get("FLOTILLA_PC_IMAGE", "")


@pytest.fixture
def office(tmp_path):
    """etcd and a coordinator on the host, and a systemd 'PC' container beside them."""
    assert IMAGE and PC_IMAGE, "FLOTILLA_IMAGE and FLOTILLA_PC_IMAGE: run scripts/test-images.sh"
    assert (MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf").is_file(), \
        f"the demo models are not in {MODELS}: run scripts/fetch-models.sh"
    binary = copy_out(BINARY, tmp_path / "flotilla")
    (tmp_path / "token").write_text("office-pc-secret\n")
    etcd = Etcd(tmp_path)
    url = f"http://127.0.0.1:{etcd.port}"
    port = free_port()
    log = open(tmp_path / "coordinator.log", "wb")
    coordinator = subprocess.Popen(
        [str(binary), "coordinator", "--etcd", url, "--listen", f"127.0.0.1:{port}",
         "--advertise", f"http://127.0.0.1:{port}", "--data-dir", str(tmp_path / "data"),
         "--token-file", str(tmp_path / "token"), "--heartbeat-timeout-s", "20"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    name = f"flotilla-office-pc-{os.getpid()}"
    started = podman(
        "run", "--detach", "--rm", "--pull=never", "--name", name, "--network", "host",
        "--systemd=always", "-v", f"{binary}:/usr/local/bin/flotilla:ro",
        "-v", f"{tmp_path / 'token'}:/etc/flotilla/token:ro",
        "-v", f"{MODELS}:/root/.cache/flotilla/models:ro", PC_IMAGE, "/sbin/init")
    assert started.returncode == 0, started.stderr

    def pc(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return podman("exec", name, *args, timeout=timeout)

    def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([str(binary), *args, "--etcd", url, "--token-file",
                               str(tmp_path / "token"), "--output", "json"],
                              capture_output=True, text=True, timeout=timeout, cwd=tmp_path)

    def logs() -> str:
        journal = pc("journalctl", "--no-pager", "-u", "flotilla-worker", "-n", "60")
        return (f"--- coordinator\n{(tmp_path / 'coordinator.log').read_text(errors='replace')}"
                f"\n--- journal of flotilla-worker\n{journal.stdout}{journal.stderr}")

    try:
        wait_until("systemd to come up in the PC container", 60, lambda: pc(
            "systemctl", "is-system-running").stdout.strip() in ("running", "degraded"))
        yield {"pc": pc, "cli": cli, "logs": logs, "url": url, "root": tmp_path}
    finally:
        podman("rm", "--force", "--time", "5", name)
        coordinator.terminate()
        coordinator.wait(timeout=20)
        log.close()
        etcd.stop()


def connected_workers(office) -> list[dict]:
    out = office["cli"]("workers")
    return [w for w in json.loads(out.stdout) if w["connected"]] if out.returncode == 0 else []


def main_pid(office) -> int:
    out = office["pc"]("systemctl", "show", "--property", "MainPID", "--value",
                       "flotilla-worker")
    return int(out.stdout.strip() or 0)


def test_worker_install_makes_a_systemd_worker_that_joins_works_and_comes_back(office):
    pc, cli = office["pc"], office["cli"]
    out = pc("flotilla", "worker", "install", "--system", "--etcd", office["url"],
             "--token-file", "/etc/flotilla/token", "--device", "cpu", "--slots", "1",
             "--extra", "--threads 1", "--output", "json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["enabled"] is True, out.stdout
    assert pc("systemctl", "is-enabled", "flotilla-worker").stdout.strip() == "enabled"
    workers = wait_until("the installed worker to join", 90,
                         lambda: connected_workers(office), office["logs"])
    assert len(workers) == 1, workers

    # It works: a one-case sweep runs on it.
    sweep = write_one_case_sweep(office["root"])
    out = cli("sweep", "submit", str(sweep), "--watch", timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr + office["logs"]()

    # Killed, it comes back: systemd restarts it (Restart=always) and it joins again.
    first = main_pid(office)
    assert first > 0, office["logs"]()
    assert pc("sh", "-c", f"kill -9 {first}").returncode == 0
    wait_until("systemd to restart the worker", 60,
               lambda: main_pid(office) not in (0, first), office["logs"])
    time.sleep(1)
    wait_until("the restarted worker to join again", 90,
               lambda: connected_workers(office), office["logs"])
