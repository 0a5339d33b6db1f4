#!/usr/bin/env bash
# podman, adapted to hosts whose sandbox refuses what `podman run` asks of the kernel by
# default. On an ordinary Linux host this is plain `podman "$@"`. Where a trial container
# fails, containers run
#   - with no cgroups of their own (`--cgroups disabled`; a private mount namespace without
#     the hybrid cgroup2 mount, which crun refuses), and
#   - without rlimits in their spec (scripts/images/runtime/crun), since setrlimit is refused.
# Namespaces, mounts, users, capabilities, read-only roots and seccomp are podman's as usual.
# The verdict is kept in target/images/podman-mode (delete it to ask again).
#
#   scripts/images/podman.sh run --rm IMAGE --version
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
mode_file=$here/../../target/images/podman-mode
trial_image=${FLOTILLA_PODMAN_TRIAL_IMAGE:-docker.io/library/debian:bookworm-slim}

compat() {
  if [ "${1:-}" = run ]; then
    shift
    set -- run --cgroups disabled "$@"
  fi
  exec unshare --mount sh -c 'umount /sys/fs/cgroup/unified 2>/dev/null || true
    exec podman --cgroup-manager cgroupfs --runtime "$0" "$@"' "$here/runtime/crun" "$@"
}

mode=$(cat "$mode_file" 2>/dev/null || true)
if [ -z "$mode" ]; then
  mkdir -p "$(dirname "$mode_file")"
  if podman run --rm --network host "$trial_image" true >/dev/null 2>&1; then
    mode=plain
  else
    mode=compat
  fi
  echo "$mode" >"$mode_file"
fi
if [ "$mode" = compat ]; then
  compat "$@"
fi
exec podman "$@"
