# Sourced by scripts/run and scripts/test: make (or refresh) the project's own virtual
# environment with the given extra installed. Reinstalls only when pyproject.toml changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${BLNK_BACKUP_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
extra="$1"

if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
    echo "blnk-backup-bot needs Python 3.11 or newer (set PYTHON=/path/to/python3.11)" >&2
    exit 2
fi
if [ ! -x "$VENV/bin/python" ]; then
    echo "… creating $VENV" >&2
    "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.installed-$extra"
want="$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
# The dev extra holds everything the demo extra does.
if [ "$extra" = demo ] && [ "$(cat "$VENV/.installed-dev" 2>/dev/null || true)" = "$want" ]; then
    stamp="$VENV/.installed-dev"
fi
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    echo "… installing blnk-backup-bot[$extra] into $VENV" >&2
    log="$VENV/install.log"
    if ! { "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip &&
           "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[$extra]"; } \
           >"$log" 2>&1; then
        cat "$log" >&2
        echo "installing failed; the log above is also in $log" >&2
        exit 2
    fi
    echo "$want" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
