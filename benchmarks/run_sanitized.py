"""Runs pytest against the sanitized copy of sparseprune in build/asan/lib (``make sanitize``).

The editable install's import hook would otherwise resolve ``sparseprune`` to the normal
build whatever PYTHONPATH says, so it is removed from sys.meta_path first, and the run
checks that the extension it loaded is the sanitized one.
"""

import sys
from pathlib import Path

LIB = Path(__file__).resolve().parent.parent / "build" / "asan" / "lib"
sys.meta_path[:] = [f for f in sys.meta_path
                    if "__editable__" not in getattr(f, "__module__", "")
                    and "__editable__" not in getattr(f, "__name__", "")]
sys.path.insert(0, str(LIB))

import pytest  # noqa: E402

import sparseprune._C  # noqa: E402

if not Path(sparseprune._C.__file__).resolve().is_relative_to(LIB):
    sys.exit(f"loaded {sparseprune._C.__file__}, not the sanitized build under {LIB}")
print(f"sanitized extension: {sparseprune._C.__file__}", flush=True)
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", *sys.argv[1:]]))
