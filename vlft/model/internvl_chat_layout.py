"""Moved to the package :mod:`vlft.model.internvl_chat`; this name stays for the modules that import it."""
from __future__ import annotations

from vlft.model.internvl_chat import *  # noqa: F401,F403
from vlft.model.internvl_chat import __all__  # noqa: F401
