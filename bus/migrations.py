"""Moved to :mod:`loopbus.bus.sqlite.migrations`; ``loopbus.bus.migrations`` is that very module (existing imports work)."""

import sys

from loopbus.bus.sqlite import migrations as _module

sys.modules[__name__] = _module
