"""Moved to :mod:`loopbus.bus.sqlite.core`; ``loopbus.bus.core`` is that very module (existing imports work)."""

import sys

from loopbus.bus.sqlite import core as _module

sys.modules[__name__] = _module
