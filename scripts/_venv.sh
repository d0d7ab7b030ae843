# Sourced by the scripts: create a virtual environment (default .venv) with a
# Python >= 3.11 and install the package with one extra into it:
#   ensure_venv dev            # .venv: arq, the demo, redis-py 5
#   ensure_venv next .venv-next  # taskiq and streaQ, redis-py 8
ensure_venv() {
  local extra=$1 venv=${2:-.venv} python=${PYTHON:-}
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
  # A venv without pip is what a failed creation leaves behind: start again.
  if ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
    echo "== creating $venv with $python"
    rm -rf "$venv"
    if ! "$python" -m venv "$venv"; then
      echo "could not create $venv; on Debian and Ubuntu, install python3-venv first" >&2
      exit 1
    fi
  fi
  echo "== installing immortus-async[$extra] into $venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[$extra]"
}
