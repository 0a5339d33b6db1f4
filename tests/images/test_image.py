"""The built container image itself (scripts/test-images.sh builds it and runs these with
FLOTILLA_IMAGE set; the chart's coordinator, worker and CLI run in it through
tests/chart/test_binaries.py in the same run).

For the CUDA image (`scripts/test-images.sh --cuda`), FLOTILLA_IMAGE_DRIVER names a
libcuda.so.1 to mount where the NVIDIA container toolkit mounts the host's driver library;
the binary cannot start without one.

Fails, never skips, without FLOTILLA_IMAGE or podman."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib
from pathlib import Path

from imagelib import BINARY, IMAGE, copy_out, podman

REPO = Path(__file__).resolve().parents[2]
DRIVER = os.environ.get("FLOTILLA_IMAGE_DRIVER")
# Where the NVIDIA container toolkit puts the driver library (on the image's LD_LIBRARY_PATH).
DRIVER_PATH = "/usr/local/nvidia/lib64/libcuda.so.1"
# What a container needs to start the CUDA image's binary: the driver library mounted in.
WITH_DRIVER = ["-v", f"{DRIVER}:{DRIVER_PATH}:ro"] if DRIVER else []


def run(*args: str, entrypoint: str | None = None) -> str:
    command = ["run", "--rm", "--pull=never", "--network", "none", *WITH_DRIVER]
    if entrypoint:
        command += ["--entrypoint", entrypoint]
    out = podman(*command, IMAGE, *args)
    assert out.returncode == 0, f"{args}: {out.stdout}{out.stderr}"
    return out.stdout


def inspect() -> dict:
    assert IMAGE, "FLOTILLA_IMAGE is not set: run scripts/test-images.sh"
    out = podman("image", "inspect", IMAGE)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)[0]


def is_cuda() -> bool:
    return inspect()["Config"]["Labels"]["org.opencontainers.image.title"] == "flotilla-cuda"


def workspace_version() -> str:
    return tomllib.loads((REPO / "Cargo.toml").read_text())["workspace"]["package"]["version"]


def test_the_image_runs_flotilla_as_an_unprivileged_numeric_user():
    config = inspect()["Config"]
    assert config["User"] == "10001:10001", config["User"]
    assert config["Entrypoint"] == [BINARY], config["Entrypoint"]
    assert "7070/tcp" in config.get("ExposedPorts", {}), config.get("ExposedPorts")
    assert config["WorkingDir"] == "/home/flotilla"
    assert "HOME=/home/flotilla" in config["Env"], config["Env"]
    assert run("id", "-u", entrypoint="/usr/bin/env").strip() == "10001"


def test_version_and_labels_name_this_build():
    version = workspace_version()
    out = run("--version")
    assert re.fullmatch(rf"flotilla {re.escape(version)} \(commit (?:[0-9a-f]{{40}}|unknown)\)\n",
                        out), out
    labels = inspect()["Config"]["Labels"]
    assert labels["org.opencontainers.image.title"].startswith("flotilla"), labels
    revision = labels["org.opencontainers.image.revision"]
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", revision), revision
    # The commit given to the build is the binary's (and so results' provenance's).
    assert f"(commit {revision})" in out, (revision, out)


def test_the_binary_is_stripped_and_links_only_what_the_image_has(tmp_path):
    libs = run(BINARY, entrypoint="/usr/bin/ldd")
    assert "not found" not in libs, libs
    names = {line.split()[0] for line in libs.splitlines() if line.strip()}
    expected = {"libc.so.6", "libm.so.6", "libgcc_s.so.1", "linux-vdso.so.1"}
    if is_cuda():
        expected |= {"libcuda.so.1", "libcudart.so.13", "libcublas.so.13", "libcublasLt.so.13",
                     "libcurand.so.10", "libnvrtc.so.13", "libstdc++.so.6", "libdl.so.2",
                     "libpthread.so.0", "librt.so.1"}
    extra = {n for n in names if not n.startswith("/")} - expected
    assert not extra, f"the binary links {sorted(extra)}, which the image was not meant to need"
    # A stripped ELF has no .symtab section (the image has no binutils: read it out here).
    binary = copy_out(BINARY, tmp_path / "flotilla")
    sections = subprocess.run(["readelf", "--section-headers", "--wide", binary],
                              capture_output=True, text=True, check=True).stdout
    assert " .text " in sections, sections[:2000]
    assert " .symtab " not in sections, "the binary still has a symbol table (not stripped)"


def test_the_state_folder_belongs_to_the_user_and_the_root_is_read_only_safe():
    out = run("-c", "stat -c '%u:%g %a %n' /var/lib/flotilla /home/flotilla",
              entrypoint="/bin/sh")
    assert out.splitlines() == ["10001:10001 750 /var/lib/flotilla",
                                "10001:10001 755 /home/flotilla"], out
    # The user owns nothing else (and not the binary): a read-only root loses nothing.
    owned = run("-c", "find / -xdev -user 10001 2>/dev/null; true", entrypoint="/bin/sh").split()
    assert set(owned) <= {"/var/lib/flotilla", "/home/flotilla", "/home/flotilla/.bashrc",
                          "/home/flotilla/.profile", "/home/flotilla/.bash_logout"}, owned


def test_a_command_with_bad_input_fails_cleanly_in_the_image():
    out = podman("run", "--rm", "--pull=never", "--network", "none", *WITH_DRIVER, IMAGE,
                 "sweep", "check", "/nonexistent/sweep.yaml")
    assert out.returncode != 0
    assert "/nonexistent/sweep.yaml" in out.stderr and "panicked" not in out.stderr, out.stderr


def test_a_cuda_image_says_which_gpus_it_serves_and_needs_the_driver():
    labels = inspect()["Config"]["Labels"]
    if not is_cuda():
        assert "dev.flotilla.cuda-compute-cap" not in labels, labels
        assert not DRIVER, "FLOTILLA_IMAGE_DRIVER is for the CUDA image"
        return
    cap = labels["dev.flotilla.cuda-compute-cap"]
    assert re.fullmatch(r"\d{2,3}", cap), cap
    assert cap in labels["org.opencontainers.image.description"], labels
    recorded = run("/usr/local/share/flotilla/compute-cap", entrypoint="/bin/cat").strip()
    assert recorded == cap, (recorded, cap)
    assert DRIVER, "set FLOTILLA_IMAGE_DRIVER (scripts/test-images.sh --cuda does)"
    # Without the host's driver (no --gpus / NVIDIA runtime) the binary cannot start, even
    # for --device cpu: the loader names the missing library.
    out = podman("run", "--rm", "--pull=never", "--network", "none", IMAGE, "--version")
    assert out.returncode != 0 and "libcuda.so.1" in out.stderr, out.stdout + out.stderr
