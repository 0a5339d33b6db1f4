#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs flotilla's whole test suite: unit tests, and the
# end-to-end tests on the real demo models, and the Helm chart's tests. This is what CI runs
# (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --workspace --tests --locked
cargo test --workspace --locked -- --test-threads 2
# The Helm chart: lint, render, strict Kubernetes schemas, the rendered args run for real.
bash scripts/test-chart.sh
