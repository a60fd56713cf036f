"""Stock levels per product."""

_stock: dict[str, int] = {}


def add(product: str, count: int) -> None:
    # TODO: refuse negative counts
    _stock[product] = _stock.get(product, 0) + count


def remove(product: str, count: int) -> bool:
    """Take items out of stock; False when there are not enough."""
    if _stock.get(product, 0) < count:
        return False
    _stock[product] -= count
    return True
