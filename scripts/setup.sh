#!/usr/bin/env bash
# Set up a virtualenv in .venv with everything the project needs.
#   bash scripts/setup.sh          # runtime dependencies
#   bash scripts/setup.sh --test   # plus test tools (Debian chromium, docker-compose) when possible
# torch is pinned exactly (requirements.txt): any looser spec can pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -r requirements.txt
.venv/bin/python -m pip install -q --no-deps -e .

if [ "${1:-}" = "--test" ]; then
    # Browser and compose validation for the dashboard/compose tests. Optional: those
    # tests skip with a reason when the tools cannot be installed (no root, no apt).
    need=()
    command -v chromium >/dev/null 2>&1 || need+=(chromium)
    command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
    if [ ${#need[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "installing test tools: ${need[*]}"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null) \
            || echo "warning: could not install ${need[*]}; the tests that need them will be skipped"
    fi
fi
echo "setup done: activate with '. .venv/bin/activate'"
