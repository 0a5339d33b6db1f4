#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs flotilla's whole test suite: unit tests, and the
# end-to-end tests on the real demo models. This is what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --workspace --tests --locked
cargo test --workspace --locked -- --test-threads 2
