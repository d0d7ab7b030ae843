# Sourced by the scripts: create .venv with a Python >= 3.11 and install the package.
ensure_venv() {
  local extra=$1 python=${PYTHON:-}
  if [ -z "$python" ]; then
    for candidate in python3 python3.13 python3.12 python3.11; do
      if command -v "$candidate" >/dev/null 2>&1 &&
        "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        python=$candidate
        break
      fi
    done
  fi
  if [ -z "$python" ]; then
    echo "immortus-async needs Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2
    exit 1
  fi
  if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv with $python"
    "$python" -m venv .venv
  fi
  echo "== installing immortus-async[$extra] into .venv"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[$extra]"
}
