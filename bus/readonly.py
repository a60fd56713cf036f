"""Moved to :mod:`loopbus.bus.sqlite.readonly`; ``loopbus.bus.readonly`` is that very module (existing imports work)."""

import sys
from typing import TYPE_CHECKING

from loopbus.bus.sqlite import readonly as _module

if TYPE_CHECKING:  # what type checkers see here: the module's public names
    from loopbus.bus.sqlite.readonly import *  # noqa: F403

sys.modules[__name__] = _module
