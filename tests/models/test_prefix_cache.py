"""The prefix (KV) cache: cached and uncached greedy generations are token-for-token identical,
and each turn prefills only what is new."""

from __future__ import annotations

from typing import Any

from loopbus.models.mlx_backend import MLXRuntime, PrefixCache

USER_TURNS = [
    "Count the lines of README.md.",
    "Now open setup.py and find the version.",
    "Search the repo for TODO comments.",
    "Summarize what you found in one sentence.",
    "Write the final answer.",
]


def _check_handle(cache: PrefixCache, prompt: list[int], gen_ids: list[int]) -> None:
    # The handle covers exactly the prompt plus every token fed back (all generated ones).
    assert cache.tokens == prompt + gen_ids
    assert cache.kv is not None and all(c.offset == len(cache.tokens) for c in cache.kv)


def test_append_only_turns_match_uncached(tiny_rt: MLXRuntime, chat: list[dict[str, str]]) -> None:
    cache = tiny_rt.new_cache()
    messages: list[dict[str, Any]] = chat[:1]
    total_prompt = total_prefill = 0
    previous_prompt = 0
    for turn, user in enumerate(USER_TURNS):
        messages = messages + [{"role": "user", "content": user}]
        cached = tiny_rt.generate(messages, max_tokens=20, cache=cache)
        fresh = tiny_rt.generate(messages, max_tokens=20)
        assert cached.token_ids == fresh.token_ids, f"turn {turn} diverged"
        assert cached.text == fresh.text
        assert cached.prompt_tokens == fresh.prompt_tokens
        _check_handle(cache, tiny_rt.prompt_ids(messages), cached.token_ids)
        prefilled = cached.prompt_tokens - cached.cached_tokens
        if turn == 0:
            assert cached.cached_tokens == 0
        else:
            # Everything up to the previous reply is reused. (Random-weight replies need not
            # re-tokenize to the sampled ids, so the reply itself may be prefilled again.)
            assert cached.cached_tokens >= previous_prompt, (turn, cached.cached_tokens)
        previous_prompt = cached.prompt_tokens
        total_prompt += cached.prompt_tokens
        total_prefill += prefilled
        messages = messages + [{"role": "assistant", "content": cached.text}]
    assert cache.prefilled == total_prefill and cache.reused == total_prompt - total_prefill
    assert total_prefill * 2 < total_prompt


def test_prefix_change_trims_and_stays_identical(
    tiny_rt: MLXRuntime, chat: list[dict[str, str]]
) -> None:
    cache = tiny_rt.new_cache()
    messages: list[dict[str, Any]] = list(chat)
    for user in USER_TURNS[:3]:
        gen = tiny_rt.generate(messages, max_tokens=16, cache=cache)
        messages += [{"role": "assistant", "content": gen.text}, {"role": "user", "content": user}]
    # Elide an early tool result: the prompt now diverges in the middle of the cached tokens.
    elided = messages[:2] + [{"role": "assistant", "content": "[elided]"}] + messages[3:]
    before = list(cache.tokens)
    prompt = tiny_rt.prompt_ids(elided)
    common = next(i for i, (a, b) in enumerate(zip(before, prompt, strict=False)) if a != b)
    cached = tiny_rt.generate(elided, max_tokens=16, cache=cache)
    assert cached.cached_tokens == common > 0
    assert cached.token_ids == tiny_rt.generate(elided, max_tokens=16).token_ids
    _check_handle(cache, prompt, cached.token_ids)
    # A different run entirely: nothing but the shared template prefix is reused.
    other = [{"role": "user", "content": "unrelated question about the weather"}]
    again = tiny_rt.generate(other, max_tokens=16, cache=cache)
    assert again.cached_tokens <= 3
    assert again.token_ids == tiny_rt.generate(other, max_tokens=16).token_ids


def test_same_prompt_twice_reuses_all_but_one(
    tiny_rt: MLXRuntime, chat: list[dict[str, str]]
) -> None:
    cache = tiny_rt.new_cache()
    first = tiny_rt.generate(chat, max_tokens=12, cache=cache)
    second = tiny_rt.generate(chat, max_tokens=12, cache=cache)
    # The cache holds prompt + reply; the prompt is a prefix of it. One token is re-run for logits.
    assert second.cached_tokens == second.prompt_tokens - 1
    assert second.token_ids == first.token_ids
    # A shorter max_tokens after a longer one, and then continuing, stay consistent too.
    short = tiny_rt.generate(chat, max_tokens=3, cache=cache)
    assert short.token_ids == first.token_ids[:3]
    _check_handle(cache, tiny_rt.prompt_ids(chat), short.token_ids)


def test_streaming_with_cache_and_early_stop(
    tiny_rt: MLXRuntime, chat: list[dict[str, str]]
) -> None:
    cache = tiny_rt.new_cache()
    it = tiny_rt.stream(chat, max_tokens=30, cache=cache)
    next(it)
    it.close()  # the consumer walks away mid-generation: the handle must stay consistent
    assert cache.kv is not None
    assert all(c.offset == len(cache.tokens) for c in cache.kv)
    assert cache.tokens[: len(tiny_rt.prompt_ids(chat))] == tiny_rt.prompt_ids(chat)
    follow = chat + [{"role": "user", "content": "go on"}]
    assert (
        tiny_rt.generate(follow, max_tokens=10, cache=cache).token_ids
        == tiny_rt.generate(follow, max_tokens=10).token_ids
    )


def test_constrained_generation_with_cache_matches(
    tiny_rt: MLXRuntime, chat: list[dict[str, str]]
) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string", "maxLength": 30}},
        "required": ["answer"],
    }
    cache = tiny_rt.new_cache()
    messages: list[dict[str, Any]] = list(chat)
    for user in USER_TURNS[:3]:
        cached = tiny_rt.generate(messages, schema=schema, max_tokens=60, cache=cache)
        fresh = tiny_rt.generate(messages, schema=schema, max_tokens=60)
        assert cached.token_ids == fresh.token_ids
        _check_handle(cache, tiny_rt.prompt_ids(messages), cached.token_ids)
        messages += [
            {"role": "assistant", "content": cached.text},
            {"role": "user", "content": user},
        ]
