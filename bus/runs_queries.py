"""Moved to :mod:`loopbus.bus.sqlite.runs_queries`; ``loopbus.bus.runs_queries`` is that very module (existing imports work)."""

import sys

from loopbus.bus.sqlite import runs_queries as _module

sys.modules[__name__] = _module
