#!/usr/bin/env bash
# The device check: one prepared run on a GPU machine that has the NVIDIA driver and CUDA 13
# (toolkit or PyTorch cu130's nvidia-* wheels) but no Rust and no network. It runs the
# prebuilt binary from scripts/build-cuda.sh on slimmed copies of the demo models and writes
# a JSON summary; see scripts/device_check.py for the steps and scripts/device_slim.py for the
# slimming.
#
# Here (where the binary is built):
#   scripts/build-cuda.sh
#   scripts/device-check.sh --prepare [--llm-layers N] [--embed-layers N] ...
#     stages .device/ (ignored by git): bin/flotilla.xz, models/, MANIFEST.json, under
#     60 MiB so that the carried tree stays under 64 MiB. Carry `.device` with the tree.
# There (from the repository root; finishes within 8 minutes):
#   scripts/device-check.sh [--device cuda:0|cpu] [--binary PATH] [run options...]
#     writes $OUT/device-check.json and $OUT/device-check.log ($OUT unset: ./device-check-out/).
#     Exit status 0 when every step passed.
# Environment: FLOTILLA_DEVICE (default cuda:0), FLOTILLA_BINARY (default: .device/bin/flotilla,
#   else .device/bin/flotilla.xz unpacked to a temp dir), FLOTILLA_CHECK_LLM,
#   FLOTILLA_CHECK_EMBEDDER (default: the slim models in .device/models), FLOTILLA_CUDA_LIBS
#   (folders holding libcublas.so.13 & co. when the automatic search misses them),
#   FLOTILLA_CHECK_BUDGET (seconds for all steps, default 420).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
dev_dir="${FLOTILLA_DEVICE_DIR:-$repo/.device}"
die() { echo "device-check: error: $*" >&2; exit 2; }
command -v python3 >/dev/null || die "python3 is not on PATH"

if [ "${1:-}" = --prepare ]; then
  shift
  binary="${FLOTILLA_CUDA_BINARY:-$repo/target/cuda/flotilla}"
  [ -x "$binary" ] || die "no binary at $binary: run scripts/build-cuda.sh (or set FLOTILLA_CUDA_BINARY)"
  models="${FLOTILLA_HOME:-$HOME/.cache/flotilla}/models"
  # .device/ must never be committed: ignore it locally unless the repo's rules already do.
  if git -C "$repo" rev-parse --git-dir >/dev/null 2>&1 &&
     ! git -C "$repo" check-ignore -q "$dev_dir/MANIFEST.json"; then
    exclude="$(git -C "$repo" rev-parse --git-path info/exclude)"
    mkdir -p "$(dirname "$exclude")"
    echo "/$(basename "$dev_dir")/" >>"$exclude"
    echo "device-check: added /$(basename "$dev_dir")/ to $exclude" >&2
  fi
  python3 scripts/device_check.py pack --dest "$dev_dir" --binary "$binary" \
    --model-cache "$models" "$@"
  echo "device-check: carry '$(basename "$dev_dir")' with the tree; there run scripts/device-check.sh" >&2
  exit 0
fi

device="${FLOTILLA_DEVICE:-cuda:0}"
binary="${FLOTILLA_BINARY:-}"
budget="${FLOTILLA_CHECK_BUDGET:-420}"
rest=()
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device="$2"; shift 2 ;;
    --device=*) device="${1#*=}"; shift ;;
    --binary) binary="$2"; shift 2 ;;
    --binary=*) binary="${1#*=}"; shift ;;
    --budget) budget="$2"; shift 2 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) rest+=("$1"); shift ;;
  esac
done

out="${OUT:-$repo/device-check-out}"
mkdir -p "$out"
# Scratch (the unpacked binary, training runs, the merged model) stays out of $OUT, whose
# files travel back.
work="$(mktemp -d "${TMPDIR:-/tmp}/flotilla-device-check.XXXXXX")"
trap 'rm -rf "$work"' EXIT

if [ -z "$binary" ]; then
  if [ -x "$dev_dir/bin/flotilla" ]; then
    binary="$dev_dir/bin/flotilla"
  elif [ -f "$dev_dir/bin/flotilla.xz" ]; then
    python3 -c 'import lzma, shutil, sys
with lzma.open(sys.argv[1]) as f, open(sys.argv[2], "wb") as g:
    shutil.copyfileobj(f, g, 1 << 20)' "$dev_dir/bin/flotilla.xz" "$work/flotilla" \
      || die "could not unpack $dev_dir/bin/flotilla.xz"
    chmod +x "$work/flotilla"
    binary="$work/flotilla"
  else
    die "no binary: pass --binary PATH, or carry $dev_dir (scripts/device-check.sh --prepare)"
  fi
fi
[ -x "$binary" ] || die "$binary is not an executable file"
llm="${FLOTILLA_CHECK_LLM:-$dev_dir/models/smollm2-slim.gguf}"
embedder="${FLOTILLA_CHECK_EMBEDDER:-$dev_dir/models/minilm-slim}"
[ -e "$llm" ] || die "no language model at $llm (carry $dev_dir or set FLOTILLA_CHECK_LLM)"
[ -e "$embedder" ] || die "no embedding model at $embedder (set FLOTILLA_CHECK_EMBEDDER)"

# A hard stop a little after the steps' own budget, so the whole run ends within 8 minutes;
# the summary is rewritten after every step, so a stopped run still leaves one.
hard=$(( ${budget%.*} + 45 ))
status=0
timeout -k 10 "$hard" python3 scripts/device_check.py run --binary "$binary" --llm "$llm" \
  --embedder "$embedder" --device "$device" --out "$out" --work "$work/run" --repo "$repo" \
  --budget "$budget" ${rest[@]+"${rest[@]}"} || status=$?
[ "$status" -eq 124 ] && echo "device-check: stopped after ${hard}s" >&2
echo "device-check: summary in $out/device-check.json" >&2
exit "$status"
