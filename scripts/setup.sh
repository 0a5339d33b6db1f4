#!/usr/bin/env bash
# Installs what flotilla needs to build and test on a fresh Debian machine (root, Rust
# toolchain and Python 3 with pip already there), then fetches the demo models.
# Idempotent: packages already installed and models already verified are left alone.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
# etcd-client's protos import google/protobuf/*.proto (a Recommends of protobuf-compiler).
[ -f /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
# The chart tests make TLS certificates; model conversion and the chart tests use venvs.
command -v openssl >/dev/null 2>&1 || need+=(openssl)
python3 -m venv --help >/dev/null 2>&1 || need+=(python3-venv)
# `worker install`'s unit is checked with systemd-analyze.
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
# A real Japanese PDF for the document-extraction tests.
[ -f /usr/share/doc/maint-guide-ja/maint-guide.ja.pdf ] || need+=(maint-guide-ja)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
bash scripts/fetch-models.sh >&2
