"""``python -m llm_multicloud.fleet CONFIG [--json]``: run a fleet until interrupted."""

from __future__ import annotations

from .cli import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
