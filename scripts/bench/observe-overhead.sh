#!/usr/bin/env bash
# What watching the cluster costs (issue 13): `flotilla bench dispatch` three ways, in turn,
# ROUNDS times each — plain; with --http served and scraped (/metrics every second,
# /api/state every two, as Prometheus and an open dashboard would); and with --http plus every
# assignment traced and exported over OTLP/HTTP to a local sink (a small Python receiver that
# reads and discards each export). Prints shards/s and assignment latency per run and the
# medians' ratios against the plain runs; writes the runs as JSON lines to $OUT.
#
# Environment (all optional):
#   FLOTILLA_BIN  flotilla binary (default: target/release/flotilla, built if missing)
#   ROUNDS        runs of each kind (default 3)
#   WORKERS SHARDS SLOTS   bench dispatch's (default 64, 20000, 4)
#   OUT           default /tmp/flotilla-observe-overhead.jsonl
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN="${FLOTILLA_BIN:-target/release/flotilla}"
if [ ! -x "$BIN" ]; then
  cargo build --release --locked --bin flotilla
fi
ROUNDS="${ROUNDS:-3}"
WORKERS="${WORKERS:-64}"
SHARDS="${SHARDS:-20000}"
SLOTS="${SLOTS:-4}"
OUT="${OUT:-/tmp/flotilla-observe-overhead.jsonl}"
: > "$OUT"

# The OTLP/HTTP sink: answers every POST with 200 after reading the body.
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 - "$PORT" <<'PY' &
import sys, http.server
class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
PY
SINK=$!
trap 'kill $SINK 2>/dev/null || true' EXIT
sleep 0.5

run() { # kind, then extra args
  local kind=$1; shift
  "$@" "$BIN" --output json bench dispatch --workers "$WORKERS" --shards "$SHARDS" \
    --slots "$SLOTS" ${EXTRA:-} \
    | python3 -c 'import json,sys; r=json.load(sys.stdin); r["kind"]=sys.argv[1]; print(json.dumps(r))' "$kind" \
    >> "$OUT"
}
for i in $(seq "$ROUNDS"); do
  EXTRA="" run plain env -u OTEL_EXPORTER_OTLP_ENDPOINT
  EXTRA="--http 127.0.0.1:0" run http env -u OTEL_EXPORTER_OTLP_ENDPOINT
  EXTRA="--http 127.0.0.1:0" run http+traces env OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$PORT" \
    OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf
done

python3 - "$OUT" <<'PY'
import json, sys, statistics as st
runs = [json.loads(l) for l in open(sys.argv[1])]
kinds = ["plain", "http", "http+traces"]
print(f"{'kind':<12} {'shards/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'scrapes':>7} traced  stored")
for r in runs:
    print(f"{r['kind']:<12} {r['shards_per_second']:>9.0f} {r['assignment_latency_p50_ms']:>7.2f} "
          f"{r['assignment_latency_p99_ms']:>7.2f} {r['scrapes']:>7} {str(r['traced']):<7} {r['results_stored']}")
med = {k: {m: st.median(r[m] for r in runs if r["kind"] == k)
           for m in ["shards_per_second", "assignment_latency_p50_ms", "assignment_latency_p99_ms"]}
       for k in kinds}
print()
for k in kinds[1:]:
    print(f"{k:<12} median shards/s {med[k]['shards_per_second']:.0f} = "
          f"{med[k]['shards_per_second'] / med['plain']['shards_per_second']:.3f}x plain; "
          f"p50 {med[k]['assignment_latency_p50_ms']:.2f} ms vs {med['plain']['assignment_latency_p50_ms']:.2f}; "
          f"p99 {med[k]['assignment_latency_p99_ms']:.2f} ms vs {med['plain']['assignment_latency_p99_ms']:.2f}")
PY
