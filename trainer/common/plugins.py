"""Loading what a plugin package registers under an entry-point group, so the core names plugins without importing them."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any


def load_entry_point(group: str, name: str, needs: str) -> Any | None:
    """The object registered as ``name`` in ``group``, loaded; None where no installed package registers it.

    Loading imports the plugin (and its framework): an import that fails says that ``needs`` it and which extra to
    install.
    """
    found = entry_points(group=group, name=name)
    if not found:
        return None
    try:
        return next(iter(found)).load()
    except ImportError as exc:
        raise ImportError(f"{needs} needs {exc.name or 'a missing package'}: pip install 'deepretrieval[{name}]'") \
            from exc
