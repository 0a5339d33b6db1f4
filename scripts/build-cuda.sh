#!/usr/bin/env bash
# Builds the `flotilla` binary with `--features cuda` on a machine that has no GPU and no CUDA
# installed (DESIGN.md decision 13), and leaves a stripped copy at a stable path.
#
# CUDA 13.0's compiler, headers and libraries come from the registry's `nvidia-*` wheels,
# fetched with pip's ordinary client, checked against pinned sha256s and unpacked into
# $FLOTILLA_HOME/cuda/13.0 (default ~/.cache/flotilla/cuda/13.0). The CUDA 12 `-cu12` nvcc
# wheels hold only ptxas; CUDA 13's nvcc needs nvidia-nvvm (cicc) and nvidia-cuda-crt besides.
#
# Linking: candle 0.11 builds cudarc with `dynamic-linking` and candle-kernels links a static
# libmoe.a plus libcudart, so the binary needs at run time (readelf -d shows it):
#   libcuda.so.1 (the driver), libcudart.so.13, libcublas.so.13, libcublasLt.so.13,
#   libcurand.so.10, libnvrtc.so.13, libstdc++.so.6.
# The link uses the real libraries from the wheels (same SONAMEs and symbol versions as the
# toolkit's and PyTorch cu130's), and a generated stub for libcuda.so (the driver is absent
# here; the stub exports the driver API names cudarc declares). The binary therefore runs only
# where the NVIDIA driver is installed; a CPU-only PC runs the CPU build.
#
# One binary serves one GPU generation: candle-kernels compiles PTX and cubins for exactly one
# compute capability, CUDA_COMPUTE_CAP (default 90: H100/H200, which becomes sm_90a). Build one
# binary per capability for a mixed fleet (e.g. 86 for RTX 30xx, 89 for RTX 40xx, 120 for
# RTX 50xx) and give each worker the one matching `nvidia-smi --query-gpu=compute_cap`.
#
# Environment (all optional):
#   CUDA_COMPUTE_CAP       compute capability to build for (default 90)
#   CARGO_TARGET_DIR       cargo's target dir (default <repo>/target)
#   FLOTILLA_CUDA_OUT      where the stripped binary goes (default <repo>/target/cuda/flotilla)
#   FLOTILLA_HOME          cache root (default ~/.cache/flotilla)
#   FLOTILLA_CUDA_KEEP_DEBUG=1  keep release line tables (the default drops them: faster link,
#                          and the copy is stripped anyway)
# Idempotent: wheels and the unpacked toolkit are reused when their pins match; cargo rebuilds
# only what changed. Measured on a 2-core VM under nice -n 19 (sharing the cores with another
# build): 29.5 min cold (wheels ~1.1 GB unpacked, ~680 MB downloaded), 4 s when nothing
# changed. The stripped binary is ~92 MiB (sm_90: 33 MB of cubins, PTX in .rodata), 13.7 MiB
# with xz -9 (scripts/device-check.sh --prepare ships it that way). Too slow for CI.
set -euo pipefail

say() { echo "build-cuda: $*" >&2; }
die() { say "error: $*"; exit 1; }

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
home="${FLOTILLA_HOME:-$HOME/.cache/flotilla}"
cache="$home/cuda"
wheels="$cache/wheels"
root="$cache/13.0"
compute_cap="${CUDA_COMPUTE_CAP:-90}"
target_dir="${CARGO_TARGET_DIR:-$repo/target}"
out="${FLOTILLA_CUDA_OUT:-$repo/target/cuda/flotilla}"

# name==version  sha256-of-wheel  wheel-file
pins=(
  "nvidia-cuda-nvcc==13.0.88 56fe502eb77625a12f25172caa3cdddb4e4c8ba2c8c17dba44b164761b380f03 nvidia_cuda_nvcc-13.0.88-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl"
  "nvidia-nvvm==13.0.88 c5f41ffeb6466944a026dfa5317d7d85355c119bbec279205d22f1869d1054e0 nvidia_nvvm-13.0.88-py3-none-manylinux2010_x86_64.manylinux_2_12_x86_64.whl"
  "nvidia-cuda-crt==13.0.88 2c8043c7c9e02492716426e9919fc78d2c5b3b2a7a768a88e952676b08aa55a4 nvidia_cuda_crt-13.0.88-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl"
  "nvidia-cuda-runtime==13.0.96 7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548 nvidia_cuda_runtime-13.0.96-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl"
  "nvidia-cuda-cccl==13.0.85 e0da7ad981f3a8aff08241b5bfc1af868742a63e2762f53a5171c492ef242649 nvidia_cuda_cccl-13.0.85-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl"
  "nvidia-cuda-nvrtc==13.0.88 ad9b6d2ead2435f11cbb6868809d2adeeee302e9bb94bcf0539c7a40d80e8575 nvidia_cuda_nvrtc-13.0.88-py3-none-manylinux2010_x86_64.manylinux_2_12_x86_64.whl"
  "nvidia-curand==10.4.0.35 1aee33a5da6e1db083fe2b90082def8915f30f3248d5896bcec36a579d941bfc nvidia_curand-10.4.0.35-py3-none-manylinux_2_27_x86_64.whl"
  "nvidia-cublas==13.0.2.14 0cf238ffdbe46c00cb9aa98e7bca745c223a5ca5a53e686ac8b3e5a08fe80d6c nvidia_cublas-13.0.2.14-py3-none-manylinux_2_27_x86_64.whl"
)
# Libraries the link names (-l...), with the file each wheel ships.
link_libs=(cudart:libcudart.so.13 cublas:libcublas.so.13 cublasLt:libcublasLt.so.13
           curand:libcurand.so.10 nvrtc:libnvrtc.so.13)

for tool in python3 cargo cc strip readelf sha256sum; do
  command -v "$tool" >/dev/null || die "'$tool' is not on PATH"
done
[[ "$compute_cap" =~ ^[0-9]+[af]?$ ]] || die "CUDA_COMPUTE_CAP='$compute_cap' is not like 90, 89 or 90a"
[ "$(uname -m)" = x86_64 ] || die "the pinned CUDA wheels are for x86_64, this is $(uname -m)"

verify() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

# 1. The wheels.
mkdir -p "$wheels"
for entry in "${pins[@]}"; do
  read -r spec sha wheel <<<"$entry"
  if ! verify "$wheels/$wheel" "$sha"; then
    rm -f "$wheels/$wheel"
    say "downloading $spec"
    python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$wheels" "$spec" >&2 \
      || die "pip could not download $spec"
    verify "$wheels/$wheel" "$sha" || die "$wheels/$wheel is missing or does not have sha256 $sha"
  fi
done

# 2. The toolkit tree: every wheel's nvidia/cu13/ merged into $root (bin, nvvm, include, lib).
stamp="$root/.flotilla-pins"
want_stamp="$(printf '%s\n' "${pins[@]}")"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want_stamp" ]; then
  say "unpacking CUDA 13.0 into $root"
  rm -rf "$root.tmp" "$root"
  mkdir -p "$root.tmp"
  for entry in "${pins[@]}"; do
    read -r _ _ wheel <<<"$entry"
    python3 - "$wheels/$wheel" "$root.tmp" <<'PY' || die "could not unpack $wheel"
import os, sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
prefix = "nvidia/cu13/"
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        name = info.filename
        if info.is_dir() or not name.startswith(prefix):
            continue
        rel = name[len(prefix):]
        # Not needed to build: the wheels' scan reports, the nvrtc "alt" variant, NVBLAS.
        if rel.startswith(".metadata/") or ".alt.so" in rel or "libnvblas" in rel:
            continue
        out = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with z.open(info) as src, open(out, "wb") as f:
            while chunk := src.read(1 << 20):
                f.write(chunk)
        mode = (info.external_attr >> 16) & 0o777
        if mode:
            os.chmod(out, mode | 0o600)
PY
  done
  # Wheels cannot hold symlinks: give the linker the unversioned names.
  for pair in "${link_libs[@]}"; do
    name="${pair%%:*}" file="${pair#*:}"
    [ -f "$root.tmp/lib/$file" ] || die "no lib/$file in the unpacked wheels"
    ln -sf "$file" "$root.tmp/lib/lib$name.so"
  done
  printf '%s\n' "$want_stamp" >"$root.tmp/.flotilla-pins"
  mv "$root.tmp" "$root"
fi
[ -x "$root/bin/nvcc" ] && [ -x "$root/nvvm/bin/cicc" ] || die "$root lacks bin/nvcc or nvvm/bin/cicc"

# 3. A link stub for the driver library: every driver API name cudarc's bindings declare, as
# an empty function, in a shared object whose SONAME is the driver's (libcuda.so.1), so the
# binary asks for the real driver at run time.
cudarc_version="$(awk '/^name = "cudarc"$/ {getline; gsub(/[^0-9.]/, ""); print; exit}' "$repo/Cargo.lock")"
[ -n "$cudarc_version" ] || die "no cudarc in Cargo.lock"
cudarc_src=""
for dir in "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-"$cudarc_version"; do
  [ -f "$dir/src/driver/sys/mod.rs" ] && cudarc_src="$dir"
done
if [ -z "$cudarc_src" ]; then
  say "fetching crates (cudarc $cudarc_version's source names the driver API)"
  (cd "$repo" && cargo fetch --locked >&2) || die "cargo fetch failed"
  for dir in "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-"$cudarc_version"; do
    [ -f "$dir/src/driver/sys/mod.rs" ] && cudarc_src="$dir"
  done
  [ -n "$cudarc_src" ] || die "cudarc $cudarc_version's source is not in cargo's registry cache"
fi
stub_dir="$root/lib/stubs"
stub_key="cudarc-$cudarc_version"
if [ ! -f "$stub_dir/libcuda.so" ] || [ "$(cat "$stub_dir/.key" 2>/dev/null)" != "$stub_key" ]; then
  say "generating the libcuda.so link stub from $stub_key"
  mkdir -p "$stub_dir"
  grep -oE '^pub unsafe fn cu[A-Za-z0-9_]+' "$cudarc_src/src/driver/sys/mod.rs" \
    | awk '{print "void " $4 "(void) {}"}' | sort -u >"$stub_dir/libcuda_stub.c"
  [ -s "$stub_dir/libcuda_stub.c" ] || die "found no driver API names in $cudarc_src"
  cc -shared -fPIC -o "$stub_dir/libcuda.so" -Wl,-soname,libcuda.so.1 "$stub_dir/libcuda_stub.c" \
    || die "could not build the libcuda.so stub"
  echo "$stub_key" >"$stub_dir/.key"
fi

# 4. The build. cudarc reads CUDA_ROOT (link search: lib, lib/stubs) and the CUDA version from
# `nvcc --version`; candle-kernels (cudaforge) finds nvcc on PATH / NVCC and reads
# CUDA_COMPUTE_CAP because there is no GPU to ask.
export CUDA_ROOT="$root" CUDA_PATH="$root" CUDA_HOME="$root"
export NVCC="$root/bin/nvcc" PATH="$root/bin:$PATH"
export CUDA_COMPUTE_CAP="$compute_cap" CUDARC_CUDA_VERSION=13000
export LIBRARY_PATH="$root/lib:$stub_dir${LIBRARY_PATH:+:$LIBRARY_PATH}"
export CARGO_TARGET_DIR="$target_dir"
if [ "${FLOTILLA_CUDA_KEEP_DEBUG:-0}" != 1 ]; then
  export CARGO_PROFILE_RELEASE_DEBUG=false
fi
"$NVCC" --version | grep -q "release 13.0" || die "$NVCC is not CUDA 13.0"

say "cargo build --release -p flotilla-cli --features cuda (compute capability $compute_cap)"
start=$(date +%s)
(cd "$repo" && cargo build --release --locked -p flotilla-cli --features cuda --bin flotilla) \
  || die "cargo build failed (see above)"
took=$(( $(date +%s) - start ))

# 5. The stripped copy.
built="$target_dir/release/flotilla"
[ -x "$built" ] || die "cargo did not produce $built"
mkdir -p "$(dirname "$out")"
cp "$built" "$out.tmp"
strip "$out.tmp"
mv "$out.tmp" "$out"
echo "$compute_cap" >"$out.compute-cap"
size=$(stat -c %s "$out")
say "built in ${took}s: $out ($((size / 1024 / 1024)) MiB, $size bytes, stripped, sm_$compute_cap)"
say "needs at run time: $(readelf -d "$out" | awk '/NEEDED/ {gsub(/[][]/, "", $NF); printf "%s ", $NF}')"
echo "$out"
