"""docs/errors.md ends with every error mergesmith raises, generated from the source: it is current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_error_table_in_the_docs_is_current():
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "error_table.py"), "--check"], capture_output=True)
    assert result.returncode == 0, "docs/errors.md is out of date: run python tools/error_table.py"
