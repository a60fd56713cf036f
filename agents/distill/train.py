"""LoRA training that computes the prompt prefix every example shares only once.

Every decision example of one agent starts with the same system prompt and worked examples
(~880 of ~1,000 tokens for the assistant), and LoRA trains only the last ``layers`` blocks, so
the blocks below them compute the same keys, values and hidden states for that prefix at every
step. :class:`SharedPrefixTrainer` computes them once: each step runs the frozen blocks on each
example's own suffix only (attending to the cached prefix), then the LoRA blocks on the whole
sequence (their prefix states do change with the adapter), and the output head only where the
loss is taken (the decision's tokens). Same loss as mlx-lm's ``default_loss`` with
``mask_prompt`` (tests/agents/test_distill.py compares them; mlx-lm's mask also scores one
padding position past each sequence's end, this one does not), several times less work on CPU.
Examples of several agents (several system prompts) share little but the chat template's first
tokens: given a group key per example (the pipeline uses the system message), each group's own
prefix is computed once too, and batches are drawn within a group where they can be.

It uses mlx-lm's own LoRA layers (``linear_to_lora_layers``) and writes an adapter directory
that ``mlx_lm.tuner.utils.load_adapters`` (and so ``SPEC+adapter:DIR``) loads. Models whose
blocks are not plain full-attention llama-style blocks (``model.model.embed_tokens/layers/norm``)
are not supported here; :func:`loopbus.agents.distill.pipeline.train_adapter` then falls back to mlx-lm's
``train_model``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Encoded = tuple[list[int], int]  # (token ids of prompt + decision, where the decision starts)


def supported(model: Any) -> bool:
    """Whether the model has the llama-style layout the shared-prefix pass relies on."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    return (
        inner is not None
        and hasattr(inner, "embed_tokens")
        and hasattr(inner, "norm")
        and isinstance(layers, list)
        and bool(layers)
        and not any(getattr(layer, "use_sliding", False) for layer in layers)
    )


def encode(tokenizer: Any, record: dict[str, Any]) -> Encoded:
    """Token ids of a chat record and the index where its last (assistant) message starts,
    exactly as mlx-lm's ChatDataset with ``mask_prompt`` computes them."""
    messages = record["messages"]
    tokens = list(tokenizer.apply_chat_template(messages, return_dict=False))
    prompt = tokenizer.apply_chat_template(
        messages[:-1], add_generation_prompt=True, return_dict=False
    )
    return tokens, len(prompt)


def common_prefix(examples: list[Encoded]) -> int:
    """Length of the token prefix all examples share, kept before every decision start."""
    first = examples[0][0]
    length = min(offset for _, offset in examples) - 1
    for tokens, _ in examples[1:]:
        n = 0
        for a, b in zip(first[:length], tokens, strict=False):
            if a != b:
                break
            n += 1
        length = n
    return max(length, 0)


@dataclass
class Prefix:
    """A token prefix and the frozen blocks' states for it (constants for the whole training)."""

    tokens: list[int]
    kv: list[tuple[Any, Any]]
    h: Any  # hidden states after the frozen blocks; None for an empty prefix

    def fits(self, example: Encoded) -> bool:
        """Whether ``example`` starts with this prefix, before its decision."""
        tokens, offset = example
        n = len(self.tokens)
        return n < offset and tokens[:n] == self.tokens


class SharedPrefixTrainer:
    """LoRA on the last ``layers`` blocks of ``model`` (converted in place), with the shared
    prompt prefix computed once (see the module docstring).

    ``groups``: a key per example (same order); the examples of one key share a longer prefix
    (e.g. one agent's system prompt) than all of them do. :attr:`prefixes` ``[0]`` is the
    prefix of all the examples, the others one per key.
    """

    def __init__(
        self,
        model: Any,
        examples: list[Encoded],
        *,
        layers: int,
        lora: dict[str, Any],
        groups: list[Hashable] | None = None,
    ) -> None:
        from mlx_lm.tuner.utils import linear_to_lora_layers

        self.model = model
        blocks = model.model.layers
        self.split = len(blocks) - layers
        model.freeze()
        linear_to_lora_layers(model, layers, lora)
        self.prefix = examples[0][0][: common_prefix(examples)]
        self.prefixes = [self._states(self.prefix)]
        members: dict[Hashable, list[Encoded]] = {}
        for key, example in zip(groups or [], examples, strict=False):
            members.setdefault(key, []).append(example)
        if len(members) > 1:  # one key: its prefix is the prefix of all
            for grouped in members.values():
                tokens = grouped[0][0][: common_prefix(grouped)]
                if len(tokens) > len(self.prefix):
                    self.prefixes.append(self._states(tokens))

    def _states(self, tokens: list[int]) -> Prefix:
        import mlx.core as mx
        from mlx_lm.models.base import create_attention_mask
        from mlx_lm.models.cache import KVCache

        if not tokens:
            return Prefix([], [], None)
        h = self.model.model.embed_tokens(mx.array([tokens]))
        caches = [KVCache() for _ in range(self.split)]
        mask = create_attention_mask(h, caches[0] if caches else None)
        for block, cache in zip(self.model.model.layers[: self.split], caches, strict=True):
            h = block(h, mask, cache=cache)
        kv = [cache.keys_and_values() for cache in caches]
        mx.eval(h, kv)
        return Prefix(tokens, kv, h)

    def group_of(self, examples: list[Encoded]) -> int:
        """Index in :attr:`prefixes` of the longest prefix all ``examples`` start with."""
        fitting = [
            i for i, prefix in enumerate(self.prefixes) if all(prefix.fits(e) for e in examples)
        ]
        if not fitting:
            raise ValueError("the examples do not start with the prefix the trainer was built on")
        return max(fitting, key=lambda i: len(self.prefixes[i].tokens))

    def batch(self, examples: list[Encoded]) -> tuple[Any, Any, Any, Any, int]:
        """(suffix inputs, gather index, targets, mask) arrays for a list of examples, and the
        index of the prefix they share (:meth:`group_of`)."""
        import mlx.core as mx
        import numpy as np

        group = self.group_of(examples)
        p = len(self.prefixes[group].tokens)
        suffixes = [tokens[p:-1] for tokens, _ in examples]
        width = max(len(s) for s in suffixes)
        longest = max(len(tokens) - offset for tokens, offset in examples)
        inputs = np.zeros((len(examples), width), np.int32)
        index = np.zeros((len(examples), longest), np.int32)
        targets = np.zeros((len(examples), longest), np.int32)
        valid = np.zeros((len(examples), longest), np.float32)
        for row, ((tokens, offset), suffix) in enumerate(zip(examples, suffixes, strict=True)):
            inputs[row, : len(suffix)] = suffix
            count = len(tokens) - offset
            # Position i of the sequence predicts token i + 1: the decision's tokens are
            # predicted from positions offset - 1 .. len - 2.
            index[row, :count] = np.arange(offset - 1, len(tokens) - 1)
            index[row, count:] = offset - 1
            targets[row, :count] = tokens[offset:]
            valid[row, :count] = 1.0
        return mx.array(inputs), mx.array(index), mx.array(targets), mx.array(valid), group

    def loss(
        self, model: Any, inputs: Any, index: Any, targets: Any, valid: Any, group: int = 0
    ) -> Any:
        """Mean cross-entropy of the decisions' tokens (and their count); ``group``: the
        prefix the inputs follow (see :meth:`batch`)."""
        import mlx.core as mx
        import mlx.nn as nn
        from mlx_lm.models.base import create_attention_mask
        from mlx_lm.models.cache import KVCache

        inner = model.model
        batch = inputs.shape[0]
        h = inner.embed_tokens(inputs)
        prefix_of = self.prefixes[group]
        caches = []
        for keys, values in prefix_of.kv:
            cache = KVCache()
            cache.keys = mx.broadcast_to(keys, (batch, *keys.shape[1:]))
            cache.values = mx.broadcast_to(values, (batch, *values.shape[1:]))
            cache.offset = keys.shape[2]
            caches.append(cache)
        mask = create_attention_mask(h, caches[0] if caches else None)
        for block, cache in zip(
            inner.layers[: self.split], caches or [None] * self.split, strict=True
        ):
            h = block(h, mask, cache=cache)
        h = mx.stop_gradient(h)
        if prefix_of.h is not None:
            prefix = mx.broadcast_to(prefix_of.h, (batch, *prefix_of.h.shape[1:]))
            h = mx.concatenate([prefix, h], axis=1)
        mask = create_attention_mask(h, None)
        for block in inner.layers[self.split :]:
            h = block(h, mask, cache=None)
        h = mx.take_along_axis(inner.norm(h), index[..., None], axis=1)
        head = model.lm_head if "lm_head" in model else inner.embed_tokens.as_linear
        ce = nn.losses.cross_entropy(head(h), targets) * valid
        count = valid.sum()
        return ce.astype(mx.float32).sum() / count, count


def train(
    trainer: SharedPrefixTrainer,
    train_set: list[Encoded],
    valid_set: list[Encoded],
    *,
    iters: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    val_batches: int,
    steps_per_report: int,
    report: Callable[[str, int, float], None],
) -> None:
    """Adam on the LoRA parameters for ``iters`` steps over batches sorted by prefix group, then
    length (shuffled with ``seed``); ``report(kind, iteration, loss)`` gets train and validation
    losses."""
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    import numpy as np

    model = trainer.model
    rng = np.random.default_rng(seed)
    order = sorted(
        range(len(train_set)),
        key=lambda i: (trainer.group_of([train_set[i]]), len(train_set[i][0])),
    )
    batches = [order[i : i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]
    # Validation: the shortest examples of any group (a mixed batch uses the common prefix).
    valid_order = sorted(range(len(valid_set)), key=lambda i: len(valid_set[i][0]))
    valid_batches = [
        valid_order[i : i + batch_size]
        for i in range(0, len(valid_order) - batch_size + 1, batch_size)
    ][:val_batches]

    def validate(iteration: int) -> None:
        if not valid_batches:
            return
        model.eval()
        total, count = 0.0, 0.0
        for chosen in valid_batches:
            loss, n = trainer.loss(model, *trainer.batch([valid_set[i] for i in chosen]))
            mx.eval(loss, n)
            total += loss.item() * n.item()
            count += n.item()
        report("valid", iteration, total / count)
        model.train()

    optimizer = optim.Adam(learning_rate=learning_rate)
    step = nn.value_and_grad(model, trainer.loss)
    model.train()
    validate(0)
    running, steps = 0.0, 0
    queue: list[int] = []
    for iteration in range(1, iters + 1):
        if not queue:
            queue = [int(i) for i in rng.permutation(len(batches))]
        chosen = batches[queue.pop()]
        (loss, _), grads = step(model, *trainer.batch([train_set[i] for i in chosen]))
        optimizer.update(model, grads)
        mx.eval(model.parameters(), optimizer.state, loss)
        running += loss.item()
        steps += 1
        if iteration % steps_per_report == 0 or iteration == iters:
            report("train", iteration, running / steps)
            running, steps = 0.0, 0
    validate(iters)


def save(model: Any, out: Path, config: dict[str, Any]) -> None:
    """Write the trainable (LoRA) parameters and an mlx-lm ``adapter_config.json``."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    out.mkdir(parents=True, exist_ok=True)
    weights = dict(tree_flatten(model.trainable_parameters()))
    mx.save_safetensors(str(out / "adapters.safetensors"), weights)
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
