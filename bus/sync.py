"""Moved to :mod:`loopbus.bus.sqlite.sync`; ``loopbus.bus.sync`` is that very module (existing imports work)."""

import sys

from loopbus.bus.sqlite import sync as _module

sys.modules[__name__] = _module
