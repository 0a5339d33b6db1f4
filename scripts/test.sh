#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs flotilla's whole test suite: unit tests, and the
# end-to-end tests on the real demo models, the Helm chart's tests and the container image's.
# This is what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The dashboard and report tests open the pages in a real headless Chromium.
if ! command -v chromium >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
cargo build --workspace --tests --locked
cargo test --workspace --locked -- --test-threads 2
# The Helm chart: lint, render, strict Kubernetes schemas, the rendered args run for real.
bash scripts/test-chart.sh
# The container image: built from Dockerfile (buildah), tested, and the chart's coordinator,
# worker and CLI run in it.
bash scripts/test-images.sh
