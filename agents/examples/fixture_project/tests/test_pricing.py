from pricing import discounted, with_tax


def test_with_tax() -> None:
    assert with_tax(10) == 12.0


def test_discounted() -> None:
    assert discounted(10, 50) == 5.0
