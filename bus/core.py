"""Moved to :mod:`bus.sqlite.core`; ``bus.core`` is that very module (existing imports work)."""

import sys

from bus.sqlite import core as _module

sys.modules[__name__] = _module
