"""``--backend``: the argparse type every command that picks a backend shares.

Its own module, so the command table (:mod:`lcow.cli.main`) imports it without the driver's
helpers and their imports: ``lcow tar2ext4`` loads no data-root code.
"""

from __future__ import annotations

import argparse

__all__ = ["backend_name"]


def backend_name(text: str) -> str:
    """``--backend B``: a backend's name, a built-in or an installed one. An argparse ``type``
    rather than ``choices``, so the installed backends are looked up only when it is given.

    Raises:
        argparse.ArgumentTypeError: no backend has that name (a usage error).
    """
    from lcow.backends.registry import installed_backends

    names = installed_backends().names()
    if text not in names:
        raise argparse.ArgumentTypeError(
            f"invalid choice: {text!r} (choose from {', '.join(names)})"
        )
    return text
