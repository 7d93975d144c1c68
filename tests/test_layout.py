"""The package's layout rule: small modules with one job each, none over 600 lines."""

from pathlib import Path

import reformer_hf

PACKAGE_DIR = Path(reformer_hf.__file__).parent


def test_no_module_of_the_package_is_over_600_lines():
    lengths = {path.name: len(path.read_text().splitlines()) for path in PACKAGE_DIR.glob("*.py")}
    assert len(lengths) > 30
    assert {name: length for name, length in lengths.items() if length > 600} == {}
