#!/usr/bin/env bash
# Sets up (scripts/setup.sh), builds flotilla and runs the main job on the demo model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --locked -p flotilla-cli
./target/release/flotilla generate --model smollm2 --chat \
  --prompt "Explain in two sentences what a benchmark of language models measures." \
  --max-tokens 96 "$@"
