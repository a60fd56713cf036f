"""Moved to :mod:`loopbus.bus.sqlite.migrations`; ``loopbus.bus.migrations`` is that very module (existing imports work)."""

import sys
from typing import TYPE_CHECKING

from loopbus.bus.sqlite import migrations as _module

if TYPE_CHECKING:  # what type checkers see here: the module's public names
    from loopbus.bus.sqlite.migrations import *  # noqa: F403

sys.modules[__name__] = _module
