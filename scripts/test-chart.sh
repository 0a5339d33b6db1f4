#!/usr/bin/env bash
# Lints, renders and validates the Helm chart (helm/flotilla), and starts the real binaries
# with the rendered coordinator's and worker's args: tests/chart/*.py under pytest.
#
# No helm binary and no cluster: Helm's own Go SDK through the registry's helm-python-sdk,
# Kubernetes 1.30 schemas through kubernetes-validate, both in a virtualenv at
# target/chart-venv (made once, reused while the pins below are unchanged).
#
# Needs: python3 (3.10+) with venv, etcd on PATH or at /usr/bin/etcd (Debian etcd-server),
# openssl, the demo models (scripts/fetch-models.sh) and a built target/debug/flotilla (cargo
# build; or FLOTILLA_BIN=path). Arguments go to pytest, e.g. `bash scripts/test-chart.sh -k tls`.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/chart-venv
pins=(helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 PyYAML==6.0.2 pytest==8.3.5 h2==4.3.0)
stamp="$venv/.flotilla-pins"

python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || { echo "test-chart: python3 3.10 or newer is needed" >&2; exit 1; }
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "${pins[*]}" ]; then
  echo "test-chart: setting up $venv (${pins[*]})" >&2
  rm -rf "$venv"
  python3 -m venv "$venv" \
    || { echo "test-chart: python3 -m venv failed (Debian: apt-get install python3-venv)" >&2; exit 1; }
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${pins[@]}"
  echo "${pins[*]}" >"$stamp"
fi

export PYTHONDONTWRITEBYTECODE=1
# FLOTILLA_TEST_PATHS: what pytest collects (scripts/test-images.sh names its own).
read -r -a paths <<<"${FLOTILLA_TEST_PATHS:-tests/chart}"
exec "$venv/bin/python" -m pytest "${paths[@]}" -p no:cacheprovider -q "$@"
