"""The digest of pyproject.toml's dependency declarations that each lock records on its first line.

`scripts/lock.sh` writes it; `tests/test_locks.py` recomputes it, so a change to the declared dependencies
without a refreshed lock fails the tests. Only the declarations count (Python range, dependencies, extras):
editing the tool settings in pyproject.toml needs no new lock.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import tomllib

PREFIX = "# pyproject-dependencies-sha256: "


def digest(pyproject: Path) -> str:
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    declared = {key: project.get(key) for key in ("requires-python", "dependencies", "optional-dependencies")}
    return hashlib.sha256(json.dumps(declared, sort_keys=True).encode()).hexdigest()


if __name__ == "__main__":
    print(PREFIX + digest(Path(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml")))
