#!/usr/bin/env bash
# Sets up (scripts/setup.sh), builds flotilla and runs the main job: the bundled quickstart
# sweep (the seed study's matrix on SmolLM2-135M: 3 prompt variants x {base, LoRA trained by
# the sweep} x {rag, document} x {en, ja}) with a coordinator and two workers in one process.
# Results land in flotilla-results/quickstart/ (results.json, cases.jsonl, report.md, adapters).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --locked --bin flotilla
# Every core for model work: the default leaves one free for the PC's user, but this is the
# job in the foreground (on 2 cores it halves the run).
./target/release/flotilla run examples/quickstart.yaml --workers 2 --threads "$(nproc)" "$@"
