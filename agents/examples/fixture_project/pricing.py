"""Prices with tax and discounts."""

TAX_RATE = 0.2


def with_tax(amount: float) -> float:
    """Return the amount including tax."""
    return round(amount * (1 + TAX_RATE), 2)


def discounted(amount: float, percent: float) -> float:
    """Apply a percentage discount."""
    return round(amount * (1 - percent / 100), 2)
