"""Moved to :mod:`loopbus.bus.sqlite.sync`; ``loopbus.bus.sync`` is that very module (existing imports work)."""

import sys
from typing import TYPE_CHECKING

from loopbus.bus.sqlite import sync as _module

if TYPE_CHECKING:  # what type checkers see here: the module's public names
    from loopbus.bus.sqlite.sync import *  # noqa: F403

sys.modules[__name__] = _module
