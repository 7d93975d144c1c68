"""Shared fixtures: real-looking English-German UI strings, and the real catalogs if installed."""

import os
from pathlib import Path

import pytest
import torch

# Triton reads TRITON_INTERPRET when it is first imported, and any test module may import it
# (through transformers or the package): set it before collection starts, on CPU-only machines.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The tests run tiny tensors, where a second intra-op thread costs more than it gives (and CI's
# two cores are also running pytest itself).
torch.set_num_threads(1)

# Strings of the kind found in office-suite gettext catalogs, with their German translations.
EN_DE_PAIRS = [
    ("The file could not be saved.", "Die Datei konnte nicht gespeichert werden."),
    ("Open the selected document", "Das ausgewählte Dokument öffnen"),
    ("Insert a new row above the current row.", "Fügt eine neue Zeile über der aktuellen Zeile ein."),
    ("Delete the selected rows", "Die ausgewählten Zeilen löschen"),
    ("Do you want to save your changes?", "Möchten Sie Ihre Änderungen speichern?"),
    ("The document contains macros.", "Das Dokument enthält Makros."),
    ("Page size", "Seitengröße"),
    ("Font color", "Schriftfarbe"),
    ("Print the current page only", "Nur die aktuelle Seite drucken"),
    ("Select a table from the list.", "Wählen Sie eine Tabelle aus der Liste."),
    (
        "The password is incorrect. The file cannot be opened.",
        "Das Kennwort ist falsch. Die Datei kann nicht geöffnet werden.",
    ),
    ("Show hidden characters", "Verborgene Zeichen anzeigen"),
    ("Replace all occurrences", "Alle Vorkommen ersetzen"),
    ("Size of the image in pixels", "Größe des Bildes in Pixeln"),
    ("Check spelling while typing", "Rechtschreibung während der Eingabe prüfen"),
    ("Close the window without saving", "Das Fenster schließen, ohne zu speichern"),
    ("Number of copies", "Anzahl der Exemplare"),
    ("Export the document as PDF", "Das Dokument als PDF exportieren"),
    ("The connection to the database was lost.", "Die Verbindung zur Datenbank wurde unterbrochen."),
    ("Sort the selected cells in ascending order", "Die ausgewählten Zellen aufsteigend sortieren"),
]

# Where Debian's libreoffice-l10n-de puts its catalogs; REFORMER_GETTEXT_DE_DIR overrides it
# (e.g. a folder unpacked with `apt-get download libreoffice-l10n-de && dpkg -x *.deb DIR`).
LIBREOFFICE_DE_CATALOGS = "usr/lib/libreoffice/program/resource/de/LC_MESSAGES"


@pytest.fixture(scope="session")
def en_de_pairs():
    return list(EN_DE_PAIRS)


@pytest.fixture(scope="session")
def real_gettext_de_dir():
    """The real German LibreOffice catalogs if present on this machine; skips otherwise."""
    candidates = [os.environ.get("REFORMER_GETTEXT_DE_DIR"), "/" + LIBREOFFICE_DE_CATALOGS]
    for candidate in filter(None, candidates):
        path = Path(candidate)
        if (path / LIBREOFFICE_DE_CATALOGS).is_dir():
            path = path / LIBREOFFICE_DE_CATALOGS
        if path.is_dir() and any(path.rglob("*.mo")):
            return path
    pytest.skip("no German gettext catalogs installed (set REFORMER_GETTEXT_DE_DIR to use some)")
