#!/usr/bin/env bash
# The drift check: build a venv from the NEWEST versions pyproject.toml allows (or, with
# --lowest, the lowest direct ones it claims), print how they differ from the lock, and run the
# test suite on them. CI keeps using the lock; run this weekly (or before refreshing the lock)
# so the next upstream break is found by us, not by a user.
#
# Usage: bash deploy/check-latest.sh [--lowest] [pytest args...]
#   e.g. bash deploy/check-latest.sh -x tests/jobs
# Exit status: pytest's. The venv stays in .venv-latest (or .venv-lowest) for a closer look.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=latest
uv_args=(--upgrade)
if [[ "${1:-}" == "--lowest" ]]; then
  mode=lowest
  uv_args=(--upgrade --resolution lowest-direct)
  shift
fi
reqs=".venv-$mode.txt"
OUT="$reqs" bash deploy/lock.sh "${uv_args[@]}"
VLMJOBS_VENV=".venv-$mode" VLMJOBS_REQUIREMENTS="$reqs" bash deploy/setup.sh --with-postgres

echo "== $mode versions that differ from deploy/requirements.lock"
diff <(grep -oE '^[a-z0-9._-]+==[^ ]+' deploy/requirements.lock | sort) \
     <(grep -oE '^[a-z0-9._-]+==[^ ]+' "$reqs" | sort) | grep -E '^[<>]' || echo "(none)"

echo "== tests on the $mode versions"
".venv-$mode/bin/python" -m pytest -q -p no:cacheprovider "$@"
