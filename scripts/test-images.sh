#!/usr/bin/env bash
# Builds the container image from Dockerfile and tests it: the image itself
# (tests/images: user, entrypoint, labels, version, linked libraries; its binary installed as
# a systemd worker on an "office PC" container whose PID 1 is systemd) and the Helm chart's
# coordinator, worker and CLI running in it as the chart configures them (read-only root,
# non-root user, dropped capabilities, the chart's volumes; tests/chart/test_binaries.py with
# FLOTILLA_IMAGE), with a real etcd and a small sweep.
#
# Builds with buildah (no Docker engine needed; apt-get installs buildah and podman) on the
# official base images, or, with FLOTILLA_IMAGE_BASES=stand-in (the default here: these
# machines reach Debian's archive and the crate registry but no container registry), on
# local stand-ins made by scripts/images/stand-in-bases.sh.
#
#   bash scripts/test-images.sh              # build flotilla:<version> and test it
#   FLOTILLA_IMAGE_BASES=registry bash scripts/test-images.sh
#   bash scripts/test-images.sh -k sweep     # arguments go to pytest
#   bash scripts/test-images.sh --cuda       # Dockerfile.cuda: flotilla:<version>-cuda
#
# --cuda builds with CUDA_COMPUTE_CAP (default 90) and tests the image itself (tests/images),
# with scripts/build-cuda.sh's libcuda link stub mounted where the NVIDIA container toolkit
# puts the host's driver library (/usr/local/nvidia/lib64): no GPU here, so nothing runs on
# one. Its stand-in bases need scripts/build-cuda.sh's unpacked toolkit. Not in CI: it needs
# the CUDA wheels (~680 MB to download) and 12.5 min of build from cold on 2 cores.
#
# Needs what scripts/test-chart.sh needs (etcd, the demo models, python3) and root (buildah's
# chroot isolation; sudo otherwise). About 12 min from cold on 2 cores (the release build),
# 1-5 min after a change (the build's cargo caches are kept); `podman image prune` reclaims
# the layers of earlier builds.
set -euo pipefail
cd "$(dirname "$0")/.."

bases=${FLOTILLA_IMAGE_BASES:-stand-in}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
image=localhost/flotilla:$version
dockerfile=Dockerfile stand_in_args=() build_args=()
if [ "${1:-}" = --cuda ]; then
  shift
  image=$image-cuda dockerfile=Dockerfile.cuda stand_in_args=(--cuda)
  build_args=(--build-arg "CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}")
  stub=${FLOTILLA_HOME:-$HOME/.cache/flotilla}/cuda/13.0/lib/stubs/libcuda.so
  [ -f "$stub" ] || { echo "test-images: no $stub: run scripts/build-cuda.sh first" >&2; exit 1; }
  export FLOTILLA_IMAGE_DRIVER=$stub
fi

# buildah's chroot isolation and podman's rootful store need root.
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "test-images: run as root (or install sudo)" >&2; exit 1; }
  exec sudo --preserve-env=FLOTILLA_HOME,FLOTILLA_IMAGE_BASES,CUDA_COMPUTE_CAP,PATH \
    bash "$0" "$@"
fi
missing=()
for tool in buildah podman crun debootstrap; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "test-images: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

case $bases in
  stand-in)
    bash scripts/images/stand-in-bases.sh "${stand_in_args[@]}"
    pull=never
    # The stand-in Rust image carries this machine's toolchain, under its version.
    build_args+=(--build-arg "RUST_VERSION=$(rustc --version | sed -n 's/^rustc \([0-9]*\.[0-9]*\).*/\1/p')")
    ;;
  registry) pull=missing ;;
  *) echo "test-images: FLOTILLA_IMAGE_BASES must be stand-in or registry, not '$bases'" >&2
     exit 2 ;;
esac

mkdir -p target/images
commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
echo "test-images: building $image (commit $commit, $bases bases)" >&2
start=$SECONDS
log=target/images/build-$(basename "$image" | tr ':' '-').log
buildah bud --isolation chroot --pull=$pull --layers --build-arg FLOTILLA_COMMIT="$commit" \
  "${build_args[@]}" -t "$image" -f "$dockerfile" . >"$log" 2>&1 \
  || { tail -40 "$log" >&2; echo "test-images: the build failed (log: $log)" >&2; exit 1; }
echo "test-images: built in $((SECONDS - start)) s; $(podman image inspect --format '{{.Size}}' "$image" | awk '{printf "%.1f MB", $1 / 1e6}')" >&2

export FLOTILLA_IMAGE=$image FLOTILLA_PODMAN="$PWD/scripts/images/podman.sh"
if [ "$dockerfile" = Dockerfile ]; then
  # An "office PC" for tests/images/test_office_pc.py: Debian slim whose PID 1 is systemd.
  pc_image=localhost/flotilla-office-pc:test
  if ! podman image exists "$pc_image"; then
    echo "test-images: making $pc_image (Debian slim with systemd)" >&2
    pc=$(buildah from --pull=$pull "docker.io/library/debian:bookworm-slim")
    buildah run --isolation chroot "$pc" sh -c 'apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        systemd systemd-sysv dbus >/dev/null && apt-get clean && rm -rf /var/lib/apt/lists/*' \
      >>"$log" 2>&1 || { tail -20 "$log" >&2; exit 1; }
    buildah commit -q --rm "$pc" "$pc_image" >/dev/null
  fi
  export FLOTILLA_PC_IMAGE=$pc_image
  export FLOTILLA_TEST_PATHS="tests/images tests/chart/test_binaries.py"
else
  export FLOTILLA_TEST_PATHS="tests/images/test_image.py"
fi
exec bash scripts/test-chart.sh "$@"
