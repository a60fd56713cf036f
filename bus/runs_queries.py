"""Moved to :mod:`bus.sqlite.runs_queries`; ``bus.runs_queries`` is that very module (existing imports work)."""

import sys

from bus.sqlite import runs_queries as _module

sys.modules[__name__] = _module
