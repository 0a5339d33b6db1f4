#!/usr/bin/env bash
# Compares flotilla's single-sequence prefill and decode throughput with llama.cpp's
# (llama-cpp-python, CPU) on the same GGUF model and the same settings.
#
# Environment (all optional):
#   MODEL          GGUF file (default $FLOTILLA_HOME/models/SmolLM2-135M-Instruct.Q4_1.gguf)
#   FLOTILLA_HOME  flotilla's cache folder (default ~/.cache/flotilla)
#   FLOTILLA_BIN   flotilla binary (default target/release/flotilla; built if missing)
#   THREADS        CPU threads for both engines (default 2)
#   LLAMACPP_VENV  venv holding llama-cpp-python (default /tmp/llamacpp-venv; created, and
#                  llama-cpp-python installed, only if missing: that builds llama.cpp from
#                  source, about 13 minutes on 2 cores)
#   LLAMACPP_CMAKE_ARGS  CMAKE_ARGS for that build (default -DGGML_NATIVE=OFF: a portable
#                  AVX2/FMA/F16C build). llama.cpp's default -march=native build enables its
#                  AMX kernels on CPUs that advertise AMX, and on this project's VMs the first
#                  AMX instruction (ldtilecfg) dies with a general protection fault (segfault
#                  in llama_decode); the portable build avoids it.
#
# Prints flotilla's JSON line, llama.cpp's JSON line and the ratios flotilla/llama.cpp.
set -euo pipefail
cd "$(dirname "$0")/../.."

FLOTILLA_HOME="${FLOTILLA_HOME:-$HOME/.cache/flotilla}"
MODEL="${MODEL:-$FLOTILLA_HOME/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
FLOTILLA_BIN="${FLOTILLA_BIN:-target/release/flotilla}"
THREADS="${THREADS:-2}"
LLAMACPP_VENV="${LLAMACPP_VENV:-/tmp/llamacpp-venv}"
PROMPT_TOKENS=128
DECODE_TOKENS=64
RUNS=3

if [ ! -f "$MODEL" ]; then
  echo "vs-llamacpp: model $MODEL not found (scripts/fetch-models.sh fetches it)" >&2
  exit 1
fi

if ! "$LLAMACPP_VENV/bin/python" -c 'import llama_cpp' >/dev/null 2>&1; then
  echo "vs-llamacpp: installing llama-cpp-python into $LLAMACPP_VENV (builds llama.cpp)" >&2
  python3 -m venv "$LLAMACPP_VENV"
  # --no-cache-dir: never reuse a wheel pip cached from a build with other CMAKE_ARGS.
  CMAKE_ARGS="${LLAMACPP_CMAKE_ARGS:--DGGML_NATIVE=OFF}" nice -n 10 \
    "$LLAMACPP_VENV/bin/pip" install --quiet --no-cache-dir llama-cpp-python >&2
fi

if [ ! -x "$FLOTILLA_BIN" ]; then
  echo "vs-llamacpp: building flotilla" >&2
  cargo build --release -p flotilla-cli >&2
fi

flotilla_json="$("$FLOTILLA_BIN" bench generate --model "$MODEL" \
  --prompt-tokens "$PROMPT_TOKENS" --decode-tokens "$DECODE_TOKENS" \
  --threads "$THREADS" --runs "$RUNS" --output json | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)))')"
llamacpp_json="$("$LLAMACPP_VENV/bin/python" scripts/bench/llamacpp_bench.py --model "$MODEL" \
  --prompt-tokens "$PROMPT_TOKENS" --decode-tokens "$DECODE_TOKENS" \
  --threads "$THREADS" --runs "$RUNS" | tail -n 1)"

echo "$flotilla_json"
echo "$llamacpp_json"
python3 - "$flotilla_json" "$llamacpp_json" <<'PY'
import json, sys
f, l = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for key, label in (("prefill_tokens_per_s", "prefill"), ("decode_tokens_per_s", "decode")):
    print(f"{label}: flotilla/llama.cpp = {f[key] / l[key]:.3f} "
          f"({f[key]:.1f} vs {l[key]:.1f} tokens/s)")
PY
