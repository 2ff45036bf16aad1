"""Is the `runtime` package on the path ARMOR Edge's? A PyPI distribution is named `runtime`
too; installed into the same environment, its files and ours share one folder.

`check_distribution()` runs when `runtime` is imported: it refuses an environment where a
distribution other than armor-edge provides the top-level package `runtime`.
`check_ours(module)` is called by ARMOR Edge's other packages after `import runtime`, which
finds someone else's `runtime` first when that one shadows ours on sys.path. Both fail with
one line: printed with exit code 2 under an armor-* command, an ImportError elsewhere.
"""

from __future__ import annotations

import os
import sys

DISTRIBUTION = "armor-edge"
MARK = "__armor_edge__"


def _fail(message: str):
    if os.path.basename(sys.argv[0] if sys.argv else "").startswith("armor-"):
        print(f"armor-edge: error: {message}", file=sys.stderr)
        raise SystemExit(2)
    raise ImportError(message)


def check_distribution() -> None:
    from importlib import metadata

    try:
        other = metadata.distribution("runtime")  # the PyPI project of that name
    except metadata.PackageNotFoundError:
        return
    _fail(f"the distribution {other.metadata['Name']} {other.version} is installed here and also provides the "
          f"top-level package 'runtime'; install ARMOR Edge in its own virtual environment "
          f"(python -m venv .venv; .venv/bin/pip install armor-edge)")


def check_ours(module) -> None:
    if not getattr(module, MARK, False):
        _fail(f"'import runtime' found {getattr(module, '__file__', module)!r}, which is not ARMOR Edge's runtime; "
              f"install ARMOR Edge in its own virtual environment")
