#!/usr/bin/env bash
# Distributed LoRA training measured (issue 10): one worker vs sync data-parallel vs DiLoCo
# at H = 10 and 50, same data (short synthetic chat examples; DATA=FILE for your own) and
# token budget, on SmolLM2,
# through `flotilla run --workers N`. Prints a table (bytes each way, bytes per optimizer
# step, held-out loss against sync, tokens/s) and the cost of those bytes for a 3B model's
# LoRA on a 1 Gb/s LAN; writes everything as JSON to $OUT.
#
# Environment (all optional):
#   FLOTILLA_BIN  flotilla binary (default: target/debug/flotilla, built if missing)
#   STEPS         optimizer steps of the one-worker and sync runs (default 200)
#   DATA MAXLEN   a chat JSONL to train on instead, and its max_seq_len (default 64)
#   WORKERS       workers of the distributed runs (default 2)
#   THREADS       CPU threads shared by the in-process workers (default 2)
#   COMPRESSION   none | fp16 | int8 (default none)
#   OUTER_LR OUTER_MOMENTUM  DiLoCo's outer Nesterov step (default 0.7, 0.9)
#   H             DiLoCo's inner steps to try, space-separated (default "10 50")
#   DILOCO_ONLY=1 skip the one-worker and sync runs (outer-optimizer ablations)
#   QUICK=1       a minute's version for CI: 4 steps, H = 1 and 2
#   OUT           the JSON report (default /tmp/flotilla-train-dist/train-dist.json)
# On a 2-core machine the workers share the CPUs: the bytes and losses are what to read,
# tokens/s only says how the runs compare on one box.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN="${FLOTILLA_BIN:-target/debug/flotilla}"
if [ ! -x "$BIN" ]; then
  cargo build --locked --bin flotilla
fi
WORK="${WORK:-/tmp/flotilla-train-dist}"
mkdir -p "$WORK"
OUT="${OUT:-$WORK/train-dist.json}"
ARGS=(--flotilla "$BIN" --workers "${WORKERS:-2}" --threads "${THREADS:-2}"
      --compression "${COMPRESSION:-none}" --work "$WORK" --json-out "$OUT"
      --outer-lr "${OUTER_LR:-0.7}" --outer-momentum "${OUTER_MOMENTUM:-0.9}")
if [ "${DILOCO_ONLY:-0}" = 1 ]; then
  ARGS+=(--diloco-only)
fi
if [ -n "${DATA:-}" ]; then
  ARGS+=(--data "$DATA" --max-seq-len "${MAXLEN:-512}")
fi
if [ "${QUICK:-0}" = 1 ]; then
  ARGS+=(--steps 4 --h 1 2 --synthetic 40)
else
  # shellcheck disable=SC2206
  ARGS+=(--steps "${STEPS:-200}" --h ${H:-10 50})
fi
python3 scripts/bench/train_dist.py "${ARGS[@]}"
echo "report: $OUT"
