#!/usr/bin/env bash
# Set up a fresh machine and run the test suite: torch's CPU build first (a plain torch
# requirement would pull a multi-GB CUDA build), then the package with its dev and gpu extras.
#
#   bash scripts/run_tests.sh [pytest arguments]
#       into the current Python, with the newest transformers that pyproject.toml allows;
#   bash scripts/run_tests.sh --transformers 5.17.0 [pytest arguments]
#       into its own virtual environment (.venv-transformers-5.17.0) with that transformers pinned:
#       the oldest version pyproject.toml allows is tested this way (CI runs both).  The environment
#       sees the machine's packages (--system-site-packages), so torch, triton and the rest already
#       installed there are not installed again; what the pin needs goes into the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=python
if [ "${1:-}" = "--transformers" ]; then
    VERSION="${2:?--transformers needs a version, e.g. --transformers 5.17.0}"
    shift 2
    VENV=".venv-transformers-$VERSION"
    [ -x "$VENV/bin/python" ] || python -m venv --system-site-packages "$VENV"
    PYTHON="$VENV/bin/python"
    "$PYTHON" -m pip install --quiet torch==2.13.0
    "$PYTHON" -m pip install --quiet -e ".[dev,gpu]" "transformers==$VERSION"
else
    "$PYTHON" -m pip install --quiet torch==2.13.0
    "$PYTHON" -m pip install --quiet -e ".[dev,gpu]"
fi
"$PYTHON" -c 'import torch, transformers; print(f"tests with torch {torch.__version__}, transformers {transformers.__version__}")'
# The real German LibreOffice catalogs (a package under 1 MB from Debian's archive) for the tests
# that read real English-German pairs; those tests skip, saying so, where the archive is out of reach.
CATALOGS=.cache/libreoffice-l10n-de
if [ ! -d "$CATALOGS" ] && command -v apt-get >/dev/null && command -v dpkg >/dev/null; then
    mkdir -p .cache/deb
    ( cd .cache/deb && { apt-get download -qq libreoffice-l10n-de 2>/dev/null \
        || { apt-get update -qq && apt-get download -qq libreoffice-l10n-de; }; } \
      && dpkg -x libreoffice-l10n-de_*.deb "../libreoffice-l10n-de" ) >/dev/null 2>&1 \
      || echo "note: could not fetch libreoffice-l10n-de; the real-catalog tests will skip"
fi
if [ -d "$CATALOGS" ]; then
    export REFORMER_GETTEXT_DE_DIR="$PWD/$CATALOGS"
fi
"$PYTHON" -m pytest "$@"
