#!/usr/bin/env bash
# Sets up (scripts/setup.sh), builds flotilla and runs the main job: the bundled quickstart
# sweep (the seed study's matrix on SmolLM2-135M: 3 prompt variants x {base, LoRA trained by
# the sweep} x {rag, document} x {en, ja}) with a coordinator and two workers in one process.
# Results land in flotilla-results/quickstart/ (results.json, cases.jsonl, report.md, adapters).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --locked --bin flotilla
./target/release/flotilla run examples/quickstart.yaml --workers 2 "$@"
