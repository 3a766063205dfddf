# Sourced by scripts/*: make .venv (once) and install EdgeTally with the given extras.
# Needs only python3 >= 3.11; on Debian/Ubuntu without python3-venv it installs that when root.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${EDGETALLY_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "EdgeTally needs Python 3.11 or newer as '$PY' (set PYTHON=...)." >&2
    exit 2
fi
if [ ! -x "$VENV/bin/python" ]; then
    if ! "$PY" -m venv "$VENV" 2>/dev/null; then
        rm -rf "$VENV"
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            ver="$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
            apt-get update -qq && (apt-get install -y -qq "python${ver}-venv" || apt-get install -y -qq python3-venv)
            "$PY" -m venv "$VENV"
        else
            echo "Cannot create a virtual environment: install python3-venv (sudo apt-get install python3-venv)." >&2
            exit 2
        fi
    fi
fi
stamp="$VENV/.edgetally-installed-$1"
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e "$ROOT[$1]"
    touch "$stamp"
fi
