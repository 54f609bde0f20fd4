"""``python -m lcow``: the same command line as the ``lcow`` console script."""

from __future__ import annotations

from lcow.cli.main import main

__all__: list[str] = []

if __name__ == "__main__":
    raise SystemExit(main())
