import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
os.environ.setdefault("MPLBACKEND", "Agg")


def require_reference(module: str):
    """Import a reference implementation (e.g. ``cyvlfeat``) or skip; with
    ``MOTION_NBS_REQUIRE_REFERENCES=1`` (as in CI) a missing reference fails instead."""
    try:
        return pytest.importorskip(module, reason=f"reference {module} is not installed (run `make test` as root)")
    except pytest.skip.Exception:
        if os.environ.get("MOTION_NBS_REQUIRE_REFERENCES") == "1":
            pytest.fail(f"reference {module} is required (MOTION_NBS_REQUIRE_REFERENCES=1) but not installed")
        raise


def require_browser():
    """The headless Chromium that the docs tests drive (Debian's `chromium` and `chromium-driver`, through
    selenium) or skip; with ``MOTION_NBS_REQUIRE_REFERENCES=1`` (as in CI) a missing browser fails instead."""
    missing = [name for name in ("chromium", "chromedriver") if not shutil.which(name)]
    try: import selenium  # noqa: F401
    except ImportError: missing.append("selenium (pip)")
    if not missing: return
    msg = f"headless browser missing: {', '.join(missing)} (run `make test` as root: it installs chromium and chromium-driver)"
    if os.environ.get("MOTION_NBS_REQUIRE_REFERENCES") == "1":
        pytest.fail(f"{msg}; required because MOTION_NBS_REQUIRE_REFERENCES=1")
    pytest.skip(msg)
