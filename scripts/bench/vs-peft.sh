#!/usr/bin/env bash
# Compares one LoRA training step (forward, backward, AdamW) of flotilla with PyTorch +
# transformers + PEFT (CPU) on the same model, LoRA config, batch and thread count, one after
# the other in one run.
#
# Both engines load the same f32 Hugging Face directory: flotilla's dequantized conversion of
# the demo GGUF (`flotilla model convert`), so the base weights are identical. LoRA r=8,
# alpha=16, dropout 0 on all 7 projections (q k v o gate up down); seeded random token ids,
# every position a target; the median step time of STEPS timed steps after WARMUP untimed ones.
#
# Environment (all optional):
#   MODEL          GGUF file (default $FLOTILLA_HOME/models/SmolLM2-135M-Instruct.Q4_1.gguf)
#   FLOTILLA_HOME  flotilla's cache folder (default ~/.cache/flotilla)
#   FLOTILLA_BIN   flotilla binary to use as is; when unset, `cargo build --release --bin
#                  flotilla` runs and target/release/flotilla is used
#   THREADS        CPU threads for both engines (default 2)
#   BATCH SEQ      batch shape (default 4 x 256)
#   RANK ALPHA     LoRA rank and alpha (default 8, 16)
#   STEPS WARMUP   timed and untimed steps (default 5, 1)
#   PEFT_VENV      the peer venv (default /tmp/peers/pvenv); built with
#                  ../shared/peer/peft/setup_peft_peer.sh (MODE=stub, CPU-only, ~1.6 GB, ~80 s)
#                  only if it cannot import torch, transformers and peft
#   PEER_DIR       the peer's folder (default ../shared/peer/peft beside the checkout)
#   WORK           scratch folder: the converted HF directory is kept there and reused
#                  (default /tmp/flotilla-vs-peft)
#   OUT            the JSON written at the end (default $WORK/vs-peft.json)
#
# Prints flotilla's JSON line, the peer's JSON line and the ratio flotilla/PEFT of the median
# step time (below 1.0: flotilla is faster), and writes all of it to $OUT. Timings mean
# something only on an otherwise idle machine: both sides record the load average.
set -euo pipefail
cd "$(dirname "$0")/../.."

FLOTILLA_HOME="${FLOTILLA_HOME:-$HOME/.cache/flotilla}"
MODEL="${MODEL:-$FLOTILLA_HOME/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
THREADS="${THREADS:-2}"
BATCH="${BATCH:-4}"
SEQ="${SEQ:-256}"
RANK="${RANK:-8}"
ALPHA="${ALPHA:-16}"
STEPS="${STEPS:-5}"
WARMUP="${WARMUP:-1}"
PEFT_VENV="${PEFT_VENV:-/tmp/peers/pvenv}"
PEER_DIR="${PEER_DIR:-../shared/peer/peft}"
WORK="${WORK:-/tmp/flotilla-vs-peft}"
OUT="${OUT:-$WORK/vs-peft.json}"

if [ ! -f "$MODEL" ]; then
  echo "vs-peft: model $MODEL not found (scripts/fetch-models.sh fetches it)" >&2
  exit 1
fi
if [ ! -f "$PEER_DIR/peft_step_bench.py" ]; then
  echo "vs-peft: $PEER_DIR/peft_step_bench.py not found (set PEER_DIR)" >&2
  exit 1
fi

if [ -z "${FLOTILLA_BIN:-}" ]; then
  echo "vs-peft: building flotilla (release)" >&2
  cargo build --release --bin flotilla >&2
  FLOTILLA_BIN=target/release/flotilla
fi

if ! "$PEFT_VENV/bin/python" -c 'import torch, transformers, peft' >/dev/null 2>&1; then
  echo "vs-peft: building the PEFT peer venv in $PEFT_VENV" >&2
  MODE=stub VENV="$PEFT_VENV" bash "$PEER_DIR/setup_peft_peer.sh" >&2
fi

mkdir -p "$WORK"
HF_DIR="$WORK/$(basename "$MODEL" .gguf)-f32-hf"
if [ ! -f "$HF_DIR/model.safetensors" ]; then
  echo "vs-peft: converting $MODEL to $HF_DIR (f32)" >&2
  "$FLOTILLA_BIN" model convert "$MODEL" "$HF_DIR" --dtype f32 >&2
fi

echo "vs-peft: flotilla, $BATCH x $SEQ, r=$RANK, $THREADS threads" >&2
flotilla_json="$(FLOTILLA_LOG="${FLOTILLA_LOG:-warn}" "$FLOTILLA_BIN" bench train --model "$HF_DIR" \
  --batch "$BATCH" --seq "$SEQ" --rank "$RANK" --alpha "$ALPHA" \
  --steps "$STEPS" --warmup "$WARMUP" --threads "$THREADS" --output json \
  | python3 -c 'import json,os,sys; d=json.load(sys.stdin); d["loadavg_after"]=os.getloadavg(); print(json.dumps(d))')"
echo "$flotilla_json"

echo "vs-peft: PEFT, $BATCH x $SEQ, r=$RANK, $THREADS threads" >&2
peer_out="$WORK/peft_step_bench.json"
rm -f "$peer_out"
OMP_NUM_THREADS="$THREADS" "$PEFT_VENV/bin/python" "$PEER_DIR/peft_step_bench.py" --hf-dir "$HF_DIR" \
  --batch "$BATCH" --seq "$SEQ" --rank "$RANK" --alpha "$ALPHA" \
  --steps "$STEPS" --warmup "$WARMUP" --threads "$THREADS" --json-out "$peer_out" >&2
peer_json="$(python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))))' "$peer_out")"
echo "$peer_json"

python3 - "$flotilla_json" "$peer_json" "$OUT" "$FLOTILLA_BIN" "$MODEL" "$HF_DIR" <<'PY'
import json, sys
f, p = json.loads(sys.argv[1]), json.loads(sys.argv[2])
out, binary, model, hf_dir = sys.argv[3:7]
ratio = f["median_ms"] / p["median_ms"]
res = {
    "model": model,
    "hf_dir": hf_dir,
    "flotilla_bin": binary,
    "threads": {"flotilla": f["threads"], "peft": p["threads"]},
    "batch": f["batch"], "seq": f["seq"],
    "lora": {"flotilla": f["lora"], "peft": p["lora"]},
    "trainable_params": {"flotilla": f["trainable_params"], "peft": p["trainable_params"]},
    "step_ms": {"flotilla": f["median_ms"], "peft": p["median_ms"]},
    "tokens_per_s": {"flotilla": f["tokens_per_s"], "peft": p["tokens_per_s"]},
    "ratio_step_time_flotilla_over_peft": ratio,
    "loadavg_after": {"flotilla": f.get("loadavg_after"), "peft": p.get("loadavg_after")},
    "flotilla": f,
    "peft": p,
}
if f["trainable_params"] != p["trainable_params"]:
    print(f"vs-peft: WARNING trainable parameters differ: flotilla {f['trainable_params']}, "
          f"PEFT {p['trainable_params']}", file=sys.stderr)
with open(out, "w") as fh:
    json.dump(res, fh, indent=1)
print(f"step time: flotilla/PEFT = {ratio:.3f} ({f['median_ms']:.0f} ms vs {p['median_ms']:.0f} ms; "
      f"{f['tokens_per_s']:.1f} vs {p['tokens_per_s']:.1f} tokens/s); written to {out}")
PY
