"""Moved to :mod:`loopbus.bus.sqlite.readonly`; ``loopbus.bus.readonly`` is that very module (existing imports work)."""

import sys

from loopbus.bus.sqlite import readonly as _module

sys.modules[__name__] = _module
