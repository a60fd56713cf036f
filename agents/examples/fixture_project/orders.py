"""Order handling."""

from inventory import remove
from pricing import with_tax


def place(product: str, count: int, unit_price: float) -> float | None:
    """Reserve stock and return the total price, or None when out of stock."""
    if not remove(product, count):
        return None
    # TODO: send a confirmation email
    # FIXME: rounding happens twice for large orders
    return with_tax(count * unit_price)
