"""Moved to :mod:`loopbus.bus.sqlite.runs_queries`; ``loopbus.bus.runs_queries`` is that very module (existing imports work)."""

import sys
from typing import TYPE_CHECKING

from loopbus.bus.sqlite import runs_queries as _module

if TYPE_CHECKING:  # what type checkers see here: the module's public names
    from loopbus.bus.sqlite.runs_queries import *  # noqa: F403

sys.modules[__name__] = _module
