"""The one error of the InternVL-chat layout."""
from __future__ import annotations

from vlft.errors import VlftError


class LayoutError(VlftError, ValueError):
    """Weights or a config that do not fit the layout they are read as (one line, names the key)."""
