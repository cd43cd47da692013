"""Where the project's data and caches live."""
from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = PROJECT_ROOT / "fixtures"
POLICIES = FIXTURES / "policies"
SCENARIOS = FIXTURES / "scenarios"


def cache_dir() -> Path:
    """Agent installs and compiled helpers; shared by runs, never visible writable to agents."""
    root = os.environ.get("PEER_HARNESS_CACHE")
    path = Path(root) if root else PROJECT_ROOT / ".cache"
    path.mkdir(parents=True, exist_ok=True)
    return path
