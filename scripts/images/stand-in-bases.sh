#!/usr/bin/env bash
# Local stand-ins for the base images the Dockerfile starts from, for machines that can reach
# Debian's package archive and the Rust toolchain but no container registry:
#
#   debian:bookworm-slim   debootstrap --variant=minbase bookworm (what the slim image is)
#   rust:X.Y-bookworm      debootstrap + gcc/g++/make/pkg-config/git, with this machine's Rust
#                          toolchain X.Y (rustup home and cargo bin laid out as the official
#                          image lays them out: /usr/local/rustup, /usr/local/cargo); build
#                          with --build-arg RUST_VERSION=X.Y (scripts/test-images.sh does)
# and with --cuda, for Dockerfile.cuda:
#   nvidia/cuda:13.0.2-devel-ubuntu24.04    Debian bookworm (not Ubuntu: its archive is out of
#                          reach) with CUDA 13.0's toolkit from the registry's wheels, as
#                          scripts/build-cuda.sh unpacks them, at /usr/local/cuda (lib64,
#                          lib64/stubs/libcuda.so), as NVIDIA's devel image has it
#   nvidia/cuda:13.0.2-runtime-ubuntu24.04  Debian slim with the runtime libraries the binary
#                          links (cudart, cublas, cublasLt, curand, nvrtc) in
#                          /usr/local/cuda/lib64, known to ld.so; no driver library (the
#                          host's comes in through the NVIDIA container toolkit)
#
# They are tagged with the official names (docker.io/library/...) in the local image store of
# podman/buildah, so `buildah bud --pull=never` builds the Dockerfile unchanged. Both trust
# the certificate authorities this machine adds to Debian's (/usr/local/share/ca-certificates),
# so a build behind an intercepting proxy reaches the crate registry as this machine does.
#
# Images built on them are for testing on this machine: they carry its added certificate
# authorities. Never push them; where the registry is reachable, build on the official images.
#
#   scripts/images/stand-in-bases.sh [--force] [--cuda]   (root; apt-get installs what it needs)
set -euo pipefail
cd "$(dirname "$0")/../.."

force=0 cuda=0
for arg in "$@"; do
  case $arg in
    --force) force=1 ;;
    --cuda) cuda=1 ;;
    *) echo "stand-in-bases: unknown argument '$arg' (--force, --cuda)" >&2; exit 2 ;;
  esac
done
release=bookworm
cuda_version=13.0.2
rust_version=$(rustc --version | sed -n 's/^rustc \([0-9]*\.[0-9]*\).*/\1/p')
[ -n "$rust_version" ] || { echo "stand-in-bases: no rustc on PATH" >&2; exit 1; }
work=target/images/bases

need() { command -v "$1" >/dev/null || missing+=("$2"); }
missing=()
need debootstrap debootstrap
need podman podman
need buildah buildah
if [ ${#missing[@]} -gt 0 ]; then
  echo "stand-in-bases: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

have() { [ $force = 0 ] && podman image exists "$1"; }

# A Debian root file system under $work/$1 with extra packages $2 (comma-separated).
bootstrap() {
  local dir=$work/$1 include=$2
  rm -rf "$dir"
  mkdir -p "$work"
  echo "stand-in-bases: debootstrap $release into $dir" >&2
  debootstrap --variant=minbase ${include:+--include=$include} "$release" "$dir" \
    >"$work/$1.log" 2>&1 || { tail -20 "$work/$1.log" >&2; exit 1; }
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    if [ -x "$dir/usr/sbin/update-ca-certificates" ]; then
      cp /usr/local/share/ca-certificates/*.crt "$dir/usr/local/share/ca-certificates/"
      chroot "$dir" update-ca-certificates >/dev/null
    fi
  fi
  # As the official Debian images are set up: apt keeps no package caches or downloaded
  # packages after an install, and dpkg leaves out documentation (copyright files stay).
  cat >"$dir/etc/apt/apt.conf.d/docker-clean" <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
  mkdir -p "$dir/etc/dpkg/dpkg.cfg.d"
  printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
    'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' >"$dir/etc/dpkg/dpkg.cfg.d/docker"
  find "$dir/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete 2>/dev/null || true
  rm -rf "$dir"/usr/share/man/* "$dir"/usr/share/info/*
  rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/*.bin "$dir"/var/cache/apt/archives/*.deb
}

slim=docker.io/library/debian:$release-slim
if have "$slim"; then
  echo "stand-in-bases: $slim is there" >&2
else
  bootstrap slim ""
  tar -C "$work/slim" -c . | podman import -q --change 'CMD ["bash"]' - "$slim" >/dev/null
  echo "stand-in-bases: made $slim" >&2
fi

rust=docker.io/library/rust:$rust_version-$release
if have "$rust"; then
  echo "stand-in-bases: $rust is there" >&2
else
  toolchain_dir=$(rustc --print sysroot)
  toolchain=$(rustc --version | awk '{print $2}')
  bootstrap rust gcc,g++,libc6-dev,make,pkg-config,ca-certificates,git,curl,xz-utils,file
  root=$work/rust
  dest=$root/usr/local/rustup/toolchains/$toolchain-x86_64-unknown-linux-gnu
  mkdir -p "$dest" "$root/usr/local/cargo/bin"
  cp -a "$toolchain_dir/." "$dest/"
  rm -rf "$dest/share/doc"
  cp "$(command -v rustup)" "$root/usr/local/cargo/bin/rustup"
  for proxy in cargo rustc rustdoc rustfmt cargo-fmt cargo-clippy clippy-driver rust-gdb; do
    ln -sf rustup "$root/usr/local/cargo/bin/$proxy"
  done
  printf 'version = "12"\ndefault_toolchain = "%s-x86_64-unknown-linux-gnu"\nprofile = "minimal"\nauto_self_update = "disable"\n' \
    "$toolchain" >"$root/usr/local/rustup/settings.toml"
  tar -C "$root" -c . | podman import -q \
    --change 'ENV RUSTUP_HOME=/usr/local/rustup' --change 'ENV CARGO_HOME=/usr/local/cargo' \
    --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change "ENV RUST_VERSION=$toolchain" --change 'CMD ["bash"]' - "$rust" >/dev/null
  echo "stand-in-bases: made $rust (rustc $toolchain from $toolchain_dir)" >&2
fi
rm -rf "$work/slim" "$work/rust"
[ $cuda = 1 ] || exit 0

# CUDA 13.0 as scripts/build-cuda.sh unpacks it from the registry's wheels (with its libcuda
# link stub), laid out as NVIDIA's images lay it out.
toolkit=${FLOTILLA_HOME:-$HOME/.cache/flotilla}/cuda/13.0
if [ ! -x "$toolkit/bin/nvcc" ] || [ ! -f "$toolkit/lib/stubs/libcuda.so" ]; then
  echo "stand-in-bases: no CUDA toolkit in $toolkit: run scripts/build-cuda.sh first" \
    "(it fetches and unpacks the wheels)" >&2
  exit 1
fi
cuda_env=(--change 'ENV PATH=/usr/local/nvidia/bin:/usr/local/cuda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
          --change 'ENV LD_LIBRARY_PATH=/usr/local/nvidia/lib:/usr/local/nvidia/lib64'
          --change 'ENV NVIDIA_VISIBLE_DEVICES=all'
          --change 'ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility'
          --change "ENV CUDA_VERSION=$cuda_version" --change 'CMD ["bash"]')
cuda_tree() {  # $1 rootfs, $2 "all" or a list of library files
  local dest=$1/usr/local/cuda-13.0
  mkdir -p "$dest/lib64"
  if [ "$2" = all ]; then
    cp -a "$toolkit/bin" "$toolkit/nvvm" "$toolkit/include" "$dest/"
    cp -a "$toolkit/lib/." "$dest/lib64/"
  else
    for lib in $2; do cp -a "$toolkit/lib/$lib" "$dest/lib64/"; done
  fi
  ln -sfn cuda-13.0 "$1/usr/local/cuda"
  ln -sfn lib64 "$dest/lib"
  echo /usr/local/cuda/lib64 >"$1/etc/ld.so.conf.d/cuda.conf"
  chroot "$1" ldconfig
}

devel=docker.io/nvidia/cuda:$cuda_version-devel-ubuntu24.04
if have "$devel"; then
  echo "stand-in-bases: $devel is there" >&2
else
  bootstrap cuda-devel ca-certificates
  cuda_tree "$work/cuda-devel" all
  tar -C "$work/cuda-devel" -c . | podman import -q "${cuda_env[@]}" - "$devel" >/dev/null
  echo "stand-in-bases: made $devel (Debian $release, CUDA from $toolkit)" >&2
fi

runtime=docker.io/nvidia/cuda:$cuda_version-runtime-ubuntu24.04
if have "$runtime"; then
  echo "stand-in-bases: $runtime is there" >&2
else
  bootstrap cuda-runtime ""
  cuda_tree "$work/cuda-runtime" "libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13 libnvrtc-builtins.so.13.0"
  tar -C "$work/cuda-runtime" -c . | podman import -q "${cuda_env[@]}" - "$runtime" >/dev/null
  echo "stand-in-bases: made $runtime (Debian $release slim, CUDA libraries from $toolkit)" >&2
fi
rm -rf "$work/cuda-devel" "$work/cuda-runtime"
