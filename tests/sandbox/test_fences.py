"""extract_code on hostile replies: linear time, and unchanged on ordinary fenced text."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopbus.agents.sandbox.core import extract_code

# The regex implementation extract_code had before issue 14 (quadratic on hostile input):
# the oracle for what ordinary replies must still give.
_OLD_FENCE = re.compile(
    r"^[ \t]*(`{3,}|~{3,})[ \t]*([\w+.-]*)[^\n]*\n(.*?)^[ \t]*\1[ \t]*$", re.M | re.S
)
_CODE_LANGS = {"", "python", "py", "python3", "micropython", "pycon"}


def _old_extract_code(text: str) -> str:
    blocks = [(m.group(2).lower(), m.group(3)) for m in _OLD_FENCE.finditer(text)]
    code = [body for lang, body in blocks if lang in _CODE_LANGS] or [body for _, body in blocks]
    if code:
        return "\n".join(block.rstrip("\n") for block in code) + "\n"
    opening = re.search(r"^[ \t]*(`{3,}|~{3,})[ \t]*([\w+.-]*)[^\n]*\n", text, re.M)
    if opening and opening.group(2).lower() in _CODE_LANGS:
        return text[opening.end() :]
    return text


SIZE = 200_000

HOSTILE = {
    "one line of backticks": "`" * SIZE,
    "one line of tildes": "~" * SIZE,
    "backticks then a newline": "`" * SIZE + "\n",
    "unterminated python fences": "```python\nx\n" * (SIZE // 12),
    "unterminated fences of growing length": "".join(
        "`" * (3 + i % 50) + "\n" for i in range(SIZE // 28)
    ),
    "openers that never close": "````python\n" * (SIZE // 11),
    "alternating lengths": "````\n```\n~~~~\n" * (SIZE // 14),
    "long runs on many lines": ("`" * 2000 + "py\n") * (SIZE // 2003),
    "indentation then no fence": (" \t" * (SIZE // 4) + "x\n") * 2,
    "prose with stray backticks": ("text `` more ``` inline ~~~\n" * (SIZE // 28)),
    "closers only": "```\n" * (SIZE // 4),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_replies_take_linear_time(name: str) -> None:
    text = HOSTILE[name]
    assert len(text) >= SIZE * 0.9
    started = time.perf_counter()
    extract_code(text)
    assert time.perf_counter() - started < 1.0, name


def test_time_grows_linearly_with_the_input() -> None:
    def cost(repeat: int) -> float:
        text = "```python\nx\n" * repeat
        times = []
        for _ in range(3):  # the best of three: a preempted run says nothing about the code
            started = time.perf_counter()
            extract_code(text)
            times.append(time.perf_counter() - started)
        return min(times)

    small, large = cost(2_000), cost(16_000)
    # 8x the input: linear is ~8x, quadratic ~64x; generous for timer noise.
    assert large < small * 24 + 0.05


_LANG = st.sampled_from(["", "python", "py", "Python3", "json", "text", "c++", "pycon", "sh"])
_FENCE = st.builds(
    lambda indent, char, length, pad, lang, tail: indent + char * length + pad + lang + tail,
    st.sampled_from(["", " ", "  ", "\t"]),
    st.sampled_from(["`", "~"]),
    st.integers(3, 5),
    st.sampled_from(["", " "]),
    _LANG,
    st.sampled_from(["", " ", "  ", " title", "`"]),
)
_PROSE = st.text(alphabet=st.characters(blacklist_characters="\n"), max_size=30)
_LINE = st.one_of(_FENCE, _PROSE, st.sampled_from(["print(1)", "x = [1, 2]", "", "  y = 3"]))


@settings(max_examples=300, deadline=None)
@given(st.lists(_LINE, max_size=14), st.booleans())
def test_ordinary_fenced_replies_are_extracted_as_before(lines: list[str], newline: bool) -> None:
    text = "\n".join(lines) + ("\n" if newline else "")
    assert extract_code(text) == _old_extract_code(text)


@given(
    st.lists(
        st.text(alphabet=st.characters(blacklist_characters="`~\r"), max_size=40),
        min_size=1,
        max_size=4,
    ),
    st.sampled_from(["```", "~~~", "````"]),
    st.sampled_from(["python", "py", ""]),
)
def test_fenced_blocks_round_trip(blocks: list[str], fence: str, lang: str) -> None:
    bodies = [b.rstrip("\n") for b in blocks]
    text = "\n".join(f"Step {i}:\n{fence}{lang}\n{body}\n{fence}" for i, body in enumerate(bodies))
    assert extract_code(text) == "\n".join(bodies) + "\n" == _old_extract_code(text)
