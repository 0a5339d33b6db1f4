#!/usr/bin/env bash
# Makes a Q4_K_M of the demo SmolLM2 with llama.cpp's own quantizer, for the K-quant
# benchmarks and the llama.cpp agreement fixture (tests/fixtures/llamacpp-smollm2-q4km.json):
#   $FLOTILLA_HOME/models/SmolLM2-135M-Instruct.Q4_K_M.gguf
# from the demo Q4_1 file (scripts/fetch-models.sh fetches it), through llama-cpp-python's
# llama_model_quantize with ftype LLAMA_FTYPE_MOSTLY_Q4_K_M and allow_requantize (the source
# is already 4-bit: each tensor is dequantized, then quantized again, so the result carries
# the Q4_1 rounding as well; it is a test and benchmark model, not a quality one). llama.cpp
# picks each tensor's type itself. K-quant blocks span 256 weights of a row and SmolLM2's
# hidden size is 576, so every matrix whose rows are 576 long falls back: Q4_K -> Q5_0
# (attn_q/k/output, ffn_gate/up, half of attn_v), Q6_K -> Q8_0 (the other attn_v, the
# tied token_embd). Only ffn_down (rows of 1536) is K-quant: Q4_K in 16 layers, Q6_K in 14.
# Prints the result's tensor counts per ggml type.
#
# Slow the first time (llama-cpp-python builds llama.cpp from source, about 13 minutes on 2
# cores), so CI does not run it. Idempotent: an existing Q4_K_M result is kept (the file is
# written as .part and renamed, so one that exists is complete).
#
# Environment (all optional):
#   FLOTILLA_HOME  flotilla's cache folder (default ~/.cache/flotilla)
#   LLAMACPP_VENV  venv holding llama-cpp-python (default /tmp/llamacpp-venv, shared with
#                  scripts/bench/vs-llamacpp.sh; created the same way if missing)
#   LLAMACPP_CMAKE_ARGS  CMAKE_ARGS for that build (default -DGGML_NATIVE=OFF; see
#                  scripts/bench/vs-llamacpp.sh for why not -march=native)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

home="${FLOTILLA_HOME:-$HOME/.cache/flotilla}"
src="$home/models/SmolLM2-135M-Instruct.Q4_1.gguf"
dst="$home/models/SmolLM2-135M-Instruct.Q4_K_M.gguf"
LLAMACPP_VENV="${LLAMACPP_VENV:-/tmp/llamacpp-venv}"

# general.file_type 15 is LLAMA_FTYPE_MOSTLY_Q4_K_M.
is_q4km() {
  [ -f "$1" ] && python3 -c '
import sys
sys.path.insert(0, sys.argv[1])
from llamacpp_quantize import read_gguf_header
sys.exit(0 if read_gguf_header(sys.argv[2])[0].get("general.file_type") == 15 else 1)
' "$here" "$1" 2>/dev/null
}

if ! is_q4km "$dst"; then
  if [ ! -f "$src" ]; then
    echo "make-smollm2-q4km: $src not found (scripts/fetch-models.sh fetches it)" >&2
    exit 1
  fi
  if ! "$LLAMACPP_VENV/bin/python" -c 'import llama_cpp' >/dev/null 2>&1; then
    echo "make-smollm2-q4km: installing llama-cpp-python into $LLAMACPP_VENV (builds llama.cpp)" >&2
    python3 -m venv "$LLAMACPP_VENV"
    # --no-cache-dir: never reuse a wheel pip cached from a build with other CMAKE_ARGS.
    CMAKE_ARGS="${LLAMACPP_CMAKE_ARGS:--DGGML_NATIVE=OFF}" nice -n 10 \
      "$LLAMACPP_VENV/bin/pip" install --quiet --no-cache-dir llama-cpp-python >&2
  fi
  # llama.cpp logs every tensor to stderr: keep that log, show its totals (or all of it on
  # failure).
  log="$(mktemp)"
  if ! "$LLAMACPP_VENV/bin/python" "$here/llamacpp_quantize.py" quantize "$src" "$dst" \
    --ftype Q4_K_M >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    exit 1
  fi
  grep -E "model size|quant size|fallback quantization" "$log" >&2 || true
  rm -f "$log"
fi
python3 "$here/llamacpp_quantize.py" summary "$dst"
echo "$dst"
