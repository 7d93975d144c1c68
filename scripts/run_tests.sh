#!/usr/bin/env bash
# Set up a fresh machine and run the test suite: torch's CPU build first (a plain torch
# requirement would pull a multi-GB CUDA build), then the package with its dev and gpu extras.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet torch==2.13.0
python -m pip install --quiet -e ".[dev,gpu]"
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
python -m pytest "$@"
