#!/usr/bin/env bash
# Builds the container image from Dockerfile and tests it: the image itself
# (tests/images: user, entrypoint, labels, version, linked libraries) and the Helm chart's
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
#
# Needs what scripts/test-chart.sh needs (etcd, the demo models, python3) and root (buildah's
# chroot isolation). Takes ~20 min from cold on 2 cores (the release build); a rebuild after
# a change reuses the build's cargo caches.
set -euo pipefail
cd "$(dirname "$0")/.."

bases=${FLOTILLA_IMAGE_BASES:-stand-in}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
image=localhost/flotilla:$version

[ "$(id -u)" -eq 0 ] || { echo "test-images: run as root (buildah's chroot isolation)" >&2; exit 1; }
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
  stand-in) bash scripts/images/stand-in-bases.sh; pull=never ;;
  registry) pull=missing ;;
  *) echo "test-images: FLOTILLA_IMAGE_BASES must be stand-in or registry, not '$bases'" >&2
     exit 2 ;;
esac

mkdir -p target/images
commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
echo "test-images: building $image (commit $commit, $bases bases)" >&2
start=$SECONDS
buildah bud --isolation chroot --pull=$pull --layers --build-arg FLOTILLA_COMMIT="$commit" \
  -t "$image" -f Dockerfile . >target/images/build.log 2>&1 \
  || { tail -40 target/images/build.log >&2; echo "test-images: the build failed (log: target/images/build.log)" >&2; exit 1; }
echo "test-images: built in $((SECONDS - start)) s; $(podman image inspect --format '{{.Size}}' "$image" | awk '{printf "%.1f MB", $1 / 1e6}')" >&2

export FLOTILLA_IMAGE=$image FLOTILLA_PODMAN="$PWD/scripts/images/podman.sh"
export FLOTILLA_TEST_PATHS="tests/images tests/chart/test_binaries.py"
exec bash scripts/test-chart.sh "$@"
