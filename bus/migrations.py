"""Moved to :mod:`bus.sqlite.migrations`; ``bus.migrations`` is that very module (existing imports work)."""

import sys

from bus.sqlite import migrations as _module

sys.modules[__name__] = _module
