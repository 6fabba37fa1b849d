#!/usr/bin/env bash
# Set up a virtualenv in .venv with everything the project needs.
#   bash scripts/setup.sh          # runtime dependencies
#   bash scripts/setup.sh --test   # plus the test requirements and tools (Debian chromium, docker-compose, postgresql)
# torch is pinned exactly (requirements.txt): any looser spec can pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true

# Refuse, before downloading anything, a torch that is not the CPU build: on a machine
# without the local CPU wheel, `torch==2.13.0` resolves to a multi-GB CUDA build.
if ! .venv/bin/python -c 'import sys, torch; sys.exit(torch.__version__ != "2.13.0+cpu")' 2>/dev/null; then
    picked=$(.venv/bin/python -m pip install -q --dry-run --no-deps --ignore-installed --report - "torch==2.13.0" 2>/dev/null \
        | .venv/bin/python -c 'import json, sys; print(json.load(sys.stdin)["install"][0]["metadata"]["version"])' 2>/dev/null || true)
    if [ "$picked" != "2.13.0+cpu" ]; then
        echo "error: pip would install torch '${picked:-?}', not the CPU build 2.13.0+cpu;" \
             "make a CPU wheel of torch 2.13.0 visible to pip (e.g. PIP_FIND_LINKS=<folder with the wheel>) and run again" >&2
        exit 1
    fi
fi
req=requirements.txt
[ "${1:-}" = "--test" ] && req=requirements-test.txt
.venv/bin/python -m pip install -q -r "$req"
.venv/bin/python -m pip install -q --no-deps -e .

if [ "${1:-}" = "--test" ]; then
    # Browser and compose validation for the dashboard/compose tests. Optional: those
    # tests skip with a reason when the tools cannot be installed (no root, no apt).
    need=()
    command -v chromium >/dev/null 2>&1 || need+=(chromium)
    command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
    # The PostgreSQL replay tests start a throwaway server of their own (initdb + pg_ctl).
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || need+=(postgresql)
    if [ ${#need[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "installing test tools: ${need[*]}"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null) \
            || echo "warning: could not install ${need[*]}; the tests that need them will be skipped"
    fi
fi
echo "setup done: activate with '. .venv/bin/activate'"
