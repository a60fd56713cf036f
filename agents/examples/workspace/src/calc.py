"""Pebble's calculator."""


def add(a: int, b: int) -> int:
    return a + b


def divide(a: int, b: int) -> float:
    # TODO: handle division by zero
    return a / b
