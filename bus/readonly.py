"""Moved to :mod:`bus.sqlite.readonly`; ``bus.readonly`` is that very module (existing imports work)."""

import sys

from bus.sqlite import readonly as _module

sys.modules[__name__] = _module
