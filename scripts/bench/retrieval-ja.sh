#!/usr/bin/env bash
# Japanese vs English retrieval on a real bilingual document set: the Debian Reference,
# chapters 4 (Authentication and access controls) and 8 (I18N and L10N), in English and in
# Japanese, with the same 12 questions asked in each language (gold passages verbatim in each
# language's text; scripts/bench/retrieval_ja_cases.py). For every retrieval mode and language
# it runs `flotilla eval` with the quickstart model (SmolLM2-135M) and records recall@k
# (results.json `mean_recall_at_k`), the wall time of the whole eval (chunking, embedding,
# generation, self-judging) and the mean prompt tokens.
#
# Each run gets a fresh FLOTILLA_HOME (the models linked in, an empty embedding cache), so every
# run pays for its own chunking and embedding.
#
# Environment (all optional):
#   FLOTILLA_BIN   flotilla binary (default target/debug/flotilla, built if missing)
#   OLD_BIN        a flotilla binary from before token-sized chunking (character chunks of
#                  800/160, dense only); when set, it runs too, as mode `chars`
#   MODES          retrieval modes to run (default "dense hybrid"; bm25 also works)
#   EMBEDDERS      embedders to run each mode with (default "minilm"; "e5" is
#                  multilingual-e5-small); a run's label is MODE, or MODE+EMBEDDER past minilm
#   LANGS          languages (default "en ja")
#   MAX_TOKENS     answer tokens (default 32); EXPLANATION_TOKENS judge tokens (default 8)
#   FLOTILLA_HOME  where the models are (default ~/.cache/flotilla)
#   WORK           scratch folder (default /tmp/flotilla-retrieval-ja): the packages, the
#                  text, the cases, each run's results and summary.json
#
# Prints one line per run and writes $WORK/summary.json. Wall times mean something only on an
# otherwise idle machine; the load average is recorded with each run.
set -euo pipefail
cd "$(dirname "$0")/../.."

BIN="${FLOTILLA_BIN:-target/debug/flotilla}"
MODES="${MODES:-dense hybrid}"
EMBEDDERS="${EMBEDDERS:-minilm}"
LANGS="${LANGS:-en ja}"
MAX_TOKENS="${MAX_TOKENS:-32}"
EXPLANATION_TOKENS="${EXPLANATION_TOKENS:-8}"
HOME_DIR="${FLOTILLA_HOME:-$HOME/.cache/flotilla}"
WORK="${WORK:-/tmp/flotilla-retrieval-ja}"
HERE="scripts/bench"

if [ ! -x "$BIN" ]; then
  cargo build --locked --bin flotilla >&2
fi
need_models="SmolLM2-135M-Instruct.Q4_1.gguf all-MiniLM-L6-v2"
case " $EMBEDDERS " in *" e5 "*) need_models="$need_models multilingual-e5-small-q4" ;; esac
for m in $need_models; do
  if [ ! -e "$HOME_DIR/models/$m" ]; then
    echo "retrieval-ja: $HOME_DIR/models/$m missing (scripts/fetch-models.sh fetches it)" >&2
    exit 1
  fi
done

mkdir -p "$WORK/debs" "$WORK/docs"
if ! ls "$WORK"/debs/debian-reference-ja_*.deb >/dev/null 2>&1; then
  (cd "$WORK/debs" && apt-get download debian-reference-en debian-reference-ja >&2)
fi
for deb in "$WORK"/debs/*.deb; do
  dpkg-deb -x "$deb" "$WORK/pkg"
done
SRC="$WORK/pkg/usr/share/debian-reference"
for ch in ch04 ch08; do
  for lang in en ja; do
    python3 "$HERE/html_to_text.py" "$SRC/$ch.$lang.html" "$WORK/docs/$ch.$lang.txt"
  done
done
python3 "$HERE/retrieval_ja_cases.py" "$WORK/docs" "$WORK/docs/cases.jsonl" >&2
# One case file per language (older binaries have no --language).
for lang in en ja; do
  grep "\"language\": \"$lang\"" "$WORK/docs/cases.jsonl" >"$WORK/docs/cases-$lang.jsonl"
done

run() { # label bin lang extra-args...
  local label="$1" bin="$2" lang="$3"
  shift 3
  local home="$WORK/home-$label-$lang" out="$WORK/results-$label-$lang"
  rm -rf "$home" "$out"
  mkdir -p "$home"
  ln -s "$HOME_DIR/models" "$home/models"
  local load t0 t1
  load="$(cut -d' ' -f1 /proc/loadavg)"
  t0="$(date +%s.%N)"
  FLOTILLA_HOME="$home" "$bin" eval --model smollm2 --cases "$WORK/docs/cases-$lang.jsonl" \
    --max-tokens "$MAX_TOKENS" --explanation-tokens "$EXPLANATION_TOKENS" \
    --out "$out" --output json "$@" >"$out.log" 2>&1
  t1="$(date +%s.%N)"
  python3 - "$label" "$lang" "$out/results.json" "$t0" "$t1" "$load" <<'PY' | tee -a "$WORK/runs.jsonl"
import json, sys
label, lang, path, t0, t1, load = sys.argv[1:]
r = json.load(open(path))
c = r["configurations"][0]
t = r.get("timings", [{}])[0]
print(json.dumps({
    "mode": label, "language": lang, "cases": c["n"],
    "mean_recall_at_k": c["mean_recall_at_k"],
    "wall_s": round(float(t1) - float(t0), 1),
    "mean_prompt_tokens": t.get("mean_prompt_tokens"),
    "mean_latency_s": t.get("mean_latency_s"),
    "load_before": float(load),
}))
PY
}

: >"$WORK/runs.jsonl"
if [ -n "${OLD_BIN:-}" ]; then
  for lang in $LANGS; do
    run chars "$OLD_BIN" "$lang" --chunk-size 800 --chunk-overlap 160
  done
fi
for emb in $EMBEDDERS; do
  for mode in $MODES; do
    label="$mode"
    [ "$emb" = minilm ] || label="$mode+$emb"
    for lang in $LANGS; do
      run "$label" "$BIN" "$lang" --retrieval-mode "$mode" --embedder "$emb"
    done
  done
done

python3 - "$WORK/runs.jsonl" "$WORK/summary.json" <<'PY'
import json, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {(r["mode"], r["language"]): r for r in runs}
summary = {"runs": runs, "targets": []}
for mode in dict.fromkeys(r["mode"] for r in runs):
    en, ja = by.get((mode, "en")), by.get((mode, "ja"))
    if not (en and ja):
        continue
    recall_ok = ja["mean_recall_at_k"] >= 0.9 * en["mean_recall_at_k"]
    wall_ratio = ja["wall_s"] / en["wall_s"]
    summary["targets"].append({
        "mode": mode,
        "recall_en": en["mean_recall_at_k"], "recall_ja": ja["mean_recall_at_k"],
        "ja_recall_within_10pct": recall_ok,
        "wall_en_s": en["wall_s"], "wall_ja_s": ja["wall_s"],
        "wall_ratio_ja_en": round(wall_ratio, 2), "ja_wall_within_2x": wall_ratio <= 2.0,
    })
json.dump(summary, open(sys.argv[2], "w"), indent=2)
for t in summary["targets"]:
    print(json.dumps(t))
PY
