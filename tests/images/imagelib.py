"""What the image tests share: the image under test, the podman command, and copying a file
out of the image."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

IMAGE = os.environ.get("FLOTILLA_IMAGE", "")
# scripts/images/podman.sh where a plain podman cannot run containers (scripts/test-images.sh).
PODMAN = shlex.split(os.environ.get("FLOTILLA_PODMAN", "podman"))
BINARY = "/usr/local/bin/flotilla"


def podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout)


def copy_out(path: str, dest: Path) -> Path:
    """A file of IMAGE copied to `dest` (the image has no tools to inspect it with)."""
    assert IMAGE, "FLOTILLA_IMAGE is not set: run scripts/test-images.sh"
    created = podman("create", "--pull=never", IMAGE)
    assert created.returncode == 0, created.stderr
    cid = created.stdout.strip()
    try:
        copied = podman("cp", f"{cid}:{path}", str(dest))
        assert copied.returncode == 0, copied.stderr
    finally:
        podman("rm", "--force", cid)
    return dest
