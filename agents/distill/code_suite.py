"""The ``coder``'s task suite: small deterministic computations a MicroPython snippet solves.

Each task states its inputs in the question ("Add up 12, 7 and 30.", "How many times does the
letter 'a' appear in 'banana'?"), with wording varied per task; the gold trajectory is one
``run_python`` whose short code (a plan comment first, as the ``Coder`` prompt asks) prints the
answer, then ``done`` quoting the printed value. The code is written for MicroPython (no
``s[::-1]``, no ``math.factorial``). A run is correct when it ended ``done`` and its summary
holds the answer as a whole word ("17" is not in "170").

Kinds: ``code-sum``, ``code-product``, ``code-count`` (a letter in a word), ``code-reverse``,
``code-factorial``, ``code-max``, ``code-sort`` (words alphabetically), ``code-squares`` (the
sum of the squares of 1..n). Task ids are ``s{seed}-{index:03d}-{kind}``; everything comes from
the coder's own random streams (``coder:{seed}:{index}``). The workspace is an empty folder
(the coder needs no files).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from loopbus.agents.distill.tasksuite import _NUMBER_WORDS, _WORDS, Task, _done, fresh_workspace

#: The coder's task kinds.
CODE_KINDS = (
    "code-sum",
    "code-product",
    "code-count",
    "code-reverse",
    "code-factorial",
    "code-max",
    "code-sort",
    "code-squares",
)

# A maker returns (question, accepted answers, gold code, gold summary).
_Made = tuple[str, list[str], str, str]


def _listed(values: list[int]) -> str:
    """``3, 5 and 9``."""
    return ", ".join(map(str, values[:-1])) + f" and {values[-1]}"


def _sum(rng: random.Random) -> _Made:
    numbers = [rng.randint(2, 99) for _ in range(rng.randint(3, 6))]
    total = sum(numbers)
    question = rng.choice(
        (
            f"Add up {_listed(numbers)}.",
            f"What is the sum of {_listed(numbers)}?",
            f"Compute the total of these numbers: {', '.join(map(str, numbers))}.",
        )
    )
    code = f"# add the numbers\nnumbers = {numbers}\nprint(sum(numbers))"
    return question, [str(total)], code, f"The sum is {total}."


def _product(rng: random.Random) -> _Made:
    numbers = [rng.randint(2, 12) for _ in range(rng.randint(3, 4))]
    product = 1
    for number in numbers:
        product *= number
    question = rng.choice(
        (
            f"Multiply {_listed(numbers)}.",
            f"What is the product of {_listed(numbers)}?",
        )
    )
    code = (
        f"# multiply the numbers together\nproduct = 1\nfor n in {numbers}:\n"
        "    product *= n\nprint(product)"
    )
    return question, [str(product)], code, f"The product is {product}."


def _count(rng: random.Random) -> _Made:
    word = rng.choice(_WORDS) + rng.choice(_WORDS)
    letter = rng.choice(sorted(set(word)))
    count = word.count(letter)
    question = rng.choice(
        (
            f"How many times does the letter '{letter}' appear in '{word}'?",
            f"Count the letter {letter} in the word {word}.",
        )
    )
    code = f"# count the letter in the word\nprint({word!r}.count({letter!r}))"
    times = "time" if count == 1 else "times"
    summary = f"The letter '{letter}' appears {count} {times} in '{word}'."
    return question, [str(count), _NUMBER_WORDS[count]], code, summary


def _reverse(rng: random.Random) -> _Made:
    word = rng.choice(_WORDS) + rng.choice(_WORDS)
    backwards = "".join(reversed(word))
    question = rng.choice(
        (
            f"Reverse the string '{word}'.",
            f"What is '{word}' spelled backwards?",
        )
    )
    code = f"# reverse the characters\nprint(''.join(reversed({word!r})))"
    return question, [backwards], code, f"Reversed, it is {backwards}."


def _factorial(rng: random.Random) -> _Made:
    n = rng.randint(4, 12)
    value = 1
    for i in range(2, n + 1):
        value *= i
    question = rng.choice(
        (
            f"What is {n} factorial?",
            f"Compute {n}! (the factorial of {n}).",
        )
    )
    code = f"# multiply 1 to {n}\nf = 1\nfor i in range(2, {n + 1}):\n    f *= i\nprint(f)"
    return question, [str(value)], code, f"{n} factorial is {value}."


def _max(rng: random.Random) -> _Made:
    numbers = rng.sample(range(1, 500), rng.randint(4, 7))
    largest = max(numbers)
    question = rng.choice(
        (
            f"Which is the largest of {_listed(numbers)}?",
            f"Find the maximum of the list {numbers}.",
        )
    )
    code = f"# take the largest number\nprint(max({numbers}))"
    return question, [str(largest)], code, f"The largest is {largest}."


def _sort(rng: random.Random) -> _Made:
    words = rng.sample(_WORDS, rng.randint(3, 5))
    while words == sorted(words):  # the answer must not be the question's own order
        rng.shuffle(words)
    ordered = sorted(words)
    question = rng.choice(
        (
            f"Sort these words alphabetically: {', '.join(words)}.",
            f"Put {', '.join(words)} in alphabetical order.",
        )
    )
    code = f"# sort the words\nwords = {words}\nprint(' '.join(sorted(words)))"
    answers = [" ".join(ordered), ", ".join(ordered)]
    return question, answers, code, f"In order: {' '.join(ordered)}."


def _squares(rng: random.Random) -> _Made:
    n = rng.randint(3, 15)
    total = sum(i * i for i in range(1, n + 1))
    question = rng.choice(
        (
            f"What is the sum of the squares of the numbers from 1 to {n}?",
            f"Add up i*i for every i from 1 to {n}.",
        )
    )
    code = f"# add the squares of 1 to {n}\nprint(sum(i * i for i in range(1, {n + 1})))"
    return question, [str(total)], code, f"The sum of the squares is {total}."


_MAKERS: dict[str, Callable[[random.Random], _Made]] = {
    "code-sum": _sum,
    "code-product": _product,
    "code-count": _count,
    "code-reverse": _reverse,
    "code-factorial": _factorial,
    "code-max": _max,
    "code-sort": _sort,
    "code-squares": _squares,
}


def generate_code_suite(root: Path, *, seed: int, n: int) -> list[Task]:
    """``n`` coder tasks (empty workspaces under ``root/<id>/``), all from ``seed``.

    Kinds cycle through :data:`CODE_KINDS` in a seed-shuffled order, so any ``n >= 8`` covers
    each.
    """
    order = list(CODE_KINDS)
    random.Random(f"coder:{seed}").shuffle(order)
    tasks: list[Task] = []
    for index in range(n):
        kind = order[index % len(order)]
        task_id = f"s{seed}-{index:03d}-{kind}"
        workspace = fresh_workspace(Path(root) / task_id)
        question, expected, code, summary = _MAKERS[kind](random.Random(f"coder:{seed}:{index}"))
        oracle = [{"action": "run_python", "code": code}, _done(summary)]
        tasks.append(
            Task(
                task_id,
                workspace,
                question,
                expected,
                oracle,
                kind,
                [],
                agent="coder",
                whole_word=True,
            )
        )
    return tasks
