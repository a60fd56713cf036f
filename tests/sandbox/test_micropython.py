"""Ordinary MicroPython behaviour the agents rely on, inside the sandbox."""

from __future__ import annotations

import pytest

CASES = [
    ("import json\njson.loads('{\"a\": [1, 2.5, null, true]}')['a']", "[1, 2.5, None, True]"),
    ("import json\njson.dumps({'k': [1, 'x', None]})", '\'{"k": [1, "x", null]}\''),
    ("import re\nre.sub(r'(\\d+)', lambda m: '<' + m.group(1) + '>', 'a1b22')", "'a<1>b<22>'"),
    ("import re\nre.compile(r'\\s+').split('a  b c')", "['a', 'b', 'c']"),
    ("import math\nround(math.sqrt(2) * math.pi, 4)", "4.4429"),
    ("'%5.2f|%-4s|%d' % (3.14159, 'ab', 7)", "' 3.14|ab  |7'"),
    ("'{:>6}|{:.3e}|{!r}'.format('x', 12345.678, 'q')", "\"     x|1.235e+04|'q'\""),
    ("n = 7\nf'{n * 6} {n!r:>3}'", "'42   7'"),
    ("[x * x for x in range(6) if x % 2]", "[1, 9, 25]"),
    ("{k: len(k) for k in ('a', 'bb')}", "{'a': 1, 'bb': 2}"),
    ("sorted({3, 1, 2}, reverse=True)", "[3, 2, 1]"),
    ("sum(x for x in range(101))", "5050"),
    (
        "class P:\n    def __init__(self, x):\n        self.x = x\n    def __repr__(self):\n        return 'P(%d)' % self.x\nsorted([P(3), P(1)], key=lambda p: p.x)",
        "[P(1), P(3)]",
    ),
    (
        "class A:\n    def f(self):\n        return 'a'\nclass B(A):\n    def f(self):\n        return super().f() + 'b'\nB().f()",
        "'ab'",
    ),
    (
        "from collections import OrderedDict\nlist(OrderedDict([('z', 1), ('a', 2)]).keys())",
        "['z', 'a']",
    ),
    ("'  Hello World '.strip().lower().split()", "['hello', 'world']"),
    ("'a,b,,c'.split(',')", "['a', 'b', '', 'c']"),
    ("import random\nr = random.randint(1, 6)\n1 <= r <= 6", "True"),
    (
        "try:\n    1 / 0\nexcept ZeroDivisionError as e:\n    out = 'caught ' + type(e).__name__\nout",
        "'caught ZeroDivisionError'",
    ),
    ("def gen():\n    yield 1\n    yield 2\nlist(gen())", "[1, 2]"),
    ("x = 10\nx += 5\nx", "15"),
    ("2 ** 100", "1267650600228229401496703205376"),
    ("max([{'n': 2}, {'n': 5}], key=lambda d: d['n'])", "{'n': 5}"),
    ("# only a comment", None),
]


@pytest.mark.parametrize(("code", "expected"), CASES, ids=[c[0].split("\n")[0][:30] for c in CASES])
def test_ordinary_python(sandbox, code: str, expected: str | None) -> None:
    result = sandbox.run(code)
    assert result.error is None, result.error
    assert result.result == expected


def test_multiline_last_expression_keeps_line_numbers(sandbox) -> None:
    result = sandbox.run("a = 1\nb = (a +\n     2)\n(b,\n undefined_name)")
    assert result.error_type == "NameError"
    assert "line 4" in result.error  # the trailing expression was rewritten in place


def test_last_expression_with_comment_and_semicolons(sandbox) -> None:
    assert sandbox.run("a = 2; a * 3  # six").result == "6"
    assert sandbox.run("s = 'ünï'\nlen(s)  # unicode offsets").result == "3"


def test_syntax_error_is_reported(sandbox) -> None:
    result = sandbox.run("def broken(:\n    pass")
    assert result.error_type == "SyntaxError" and not result.trapped


def test_direct_stdout_writes_are_captured(sandbox) -> None:
    result = sandbox.run(
        "import sys\nsys.stdout.write('direct\\n')\nsys.stderr.write('err\\n')\nNone"
    )
    assert result.stdout == "direct\n" and result.stderr == "err\n"


def test_print_keywords(sandbox) -> None:
    result = sandbox.run("print('a', 'b', sep='-', end='!\\n', flush=True)\nprint()\nprint(1, 2)")
    assert result.stdout == "a-b!\n\n1 2\n"


def test_print_to_own_stream(sandbox) -> None:
    result = sandbox.run("import io\nbuf = io.StringIO()\nprint('kept', file=buf)\nbuf.getvalue()")
    assert result.result == "'kept\\n'" and result.stdout == ""


def test_workspace_files_via_open(make_sandbox, workspace) -> None:  # type: ignore[no-untyped-def]
    box = make_sandbox(workspace=workspace)
    result = box.run(
        "import os, json\nprint(sorted(os.listdir('/input')))\njson.loads(open('/input/docs/a.json').read())['n']"
    )
    assert result.stdout == "['docs', 'notes.txt']\n" and result.result == "3"
