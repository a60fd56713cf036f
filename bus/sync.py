"""Moved to :mod:`bus.sqlite.sync`; ``bus.sync`` is that very module (existing imports work)."""

import sys

from bus.sqlite import sync as _module

sys.modules[__name__] = _module
