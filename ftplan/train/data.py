"""Training data: JSONL, one example per line, in one of four formats.

- ``{"text": ...}``: language modelling, loss on every token
- ``{"prompt": ..., "completion": ...}``: loss on the completion only
- ``{"instruction": ..., "input": ... (optional), "output": ...}``: loss on the output only
- ``{"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": ...}, ...]}``: the tokenizer's
  chat template; loss on the assistant turns only

Every line is checked before any training starts; a bad line is an error naming the file and the line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import check_input
from ..errors import FtplanError

ROLES = ("system", "user", "assistant", "tool")
IGNORE = -100  # the label that cross-entropy ignores (prompt tokens, padding)
ALPACA_PROMPT = "### Instruction:\n{instruction}\n\n{input_block}### Response:\n"


@dataclass(frozen=True)
class Example:
    """One example as (text, trained) segments: the loss covers the segments marked trained."""

    segments: tuple[tuple[str, bool], ...] = ()
    messages: tuple[dict, ...] = ()  # chat examples keep their turns for the chat template


def _str(obj: dict, field: str, where: str, required: bool = True) -> str:
    v = obj.get(field)
    if v is None and not required:
        return ""
    if not isinstance(v, str):
        raise FtplanError(f"{where}: field {field!r} must be a string, got {type(v).__name__}")
    return _text(v, f"{where}: field {field!r}")


def _text(v: str, where: str) -> str:
    """``v`` when it is valid Unicode text: a JSON escape such as \\ud800 decodes to a lone surrogate, which no
    tokenizer can encode."""
    try:
        v.encode("utf-8")
    except UnicodeEncodeError as e:
        raise FtplanError(f"{where} holds a lone surrogate (\\u{ord(v[e.start]):04x}), which is not text") from None
    return v


def parse_line(obj: Any, where: str) -> Example:
    if not isinstance(obj, dict):
        raise FtplanError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise FtplanError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise FtplanError(f"{where}: messages[{i}] must have a role in {', '.join(ROLES)} and a string content")
            _text(m["content"], f"{where}: messages[{i}]")
        if not any(m["role"] == "assistant" for m in msgs):
            raise FtplanError(f"{where}: no assistant message, so nothing to train on")
        return Example(messages=tuple({"role": m["role"], "content": m["content"]} for m in msgs))
    if "prompt" in obj or "completion" in obj:
        return Example(((_str(obj, "prompt", where), False), (_str(obj, "completion", where), True)))
    if "instruction" in obj or "output" in obj:
        inp = _str(obj, "input", where, required=False)
        prompt = ALPACA_PROMPT.format(instruction=_str(obj, "instruction", where),
                                      input_block=f"### Input:\n{inp}\n\n" if inp else "")
        return Example(((prompt, False), (_str(obj, "output", where), True)))
    if "text" in obj:
        return Example(((_str(obj, "text", where), True),))
    raise FtplanError(f"{where}: no known fields (use text, prompt/completion, instruction/input/output, or messages); "
                      f"got {', '.join(sorted(obj)) or 'an empty object'}")


def iter_examples(path: str | Path) -> Iterator[tuple[int, Example]]:
    """(bytes read so far, example) for every example of ``path``, streaming; an error names the first bad
    line (file:line)."""
    p = check_input(path, "data file")
    done = 0
    with p.open("rb") as f:
        for n, raw in enumerate(f, 1):
            done += len(raw)
            where = f"{p}:{n}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise FtplanError(f"{where}: not UTF-8 text (byte {e.start + 1})") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise FtplanError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
            except ValueError as e:  # e.g. an integer of more than 4,300 digits
                raise FtplanError(f"{where}: not JSON ftplan can read ({str(e)[:120]})") from None
            except RecursionError:
                raise FtplanError(f"{where}: JSON nested too deeply") from None
            yield done, parse_line(obj, where)


def read_jsonl(path: str | Path) -> list[Example]:
    """Every example of ``path``, or an error naming the first bad line."""
    out = [ex for _, ex in iter_examples(path)]
    if not out:
        raise FtplanError(f"data file {str(path)!r} has no examples")
    return out


def tokenize(ex: Example, tok, seq_len: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels), truncated to ``seq_len``; labels are IGNORE where no loss is taken."""
    segments = tok.chat_segments(ex.messages) if ex.messages else list(ex.segments)
    ids: list[int] = list(tok.prefix_ids())
    labels: list[int] = [IGNORE] * len(ids)
    for text, trained in segments:
        t = tok.encode(text)
        ids += t
        labels += t if trained else [IGNORE] * len(t)
    if tok.eos_id is not None and (not ids or ids[-1] != tok.eos_id):  # chat templates often end with it
        ids.append(tok.eos_id)
        labels.append(tok.eos_id if segments and segments[-1][1] else IGNORE)
    return ids[:seq_len], labels[:seq_len]


def pack(rows: list[tuple[list[int], list[int]]], seq_len: int) -> list[tuple[list[int], list[int]]]:
    """Concatenate examples and cut them into blocks of exactly ``seq_len`` (the tail is dropped)."""
    ids: list[int] = []
    labels: list[int] = []
    for row_ids, row_labels in rows:
        ids += row_ids
        labels += row_labels
    n = len(ids) // seq_len
    return [(ids[k * seq_len:(k + 1) * seq_len], labels[k * seq_len:(k + 1) * seq_len]) for k in range(n)]


def stats(rows: list[tuple[list[int], list[int]]]) -> dict[str, Any]:
    lengths = sorted(len(i) for i, _ in rows)
    trained = sum(sum(1 for x in lab if x != IGNORE) for _, lab in rows)
    return {"examples": len(rows), "tokens": sum(lengths), "trained_tokens": trained,
            "max_len": lengths[-1] if lengths else 0, "p95_len": lengths[int(0.95 * (len(lengths) - 1))] if lengths else 0}


def suggest_seq_len(p95: int, max_positions: int) -> int:
    """The smallest power of two (at least 64) that holds 95% of the examples, within the model's limit."""
    s = 64
    while s < p95:
        s *= 2
    return min(s, max_positions)


def batches(rows: list, micro_batch: int, pad_id: int, order: list[int]) -> Iterator[dict[str, list]]:
    """Micro-batches in ``order``, padded to the longest row of each (labels IGNORE, mask 0)."""
    for k in range(0, len(order) - micro_batch + 1, micro_batch):
        chunk = [rows[i] for i in order[k:k + micro_batch]]
        width = max(len(i) for i, _ in chunk)
        yield {"input_ids": [i + [pad_id] * (width - len(i)) for i, _ in chunk],
               "labels": [lab + [IGNORE] * (width - len(lab)) for _, lab in chunk],
               "attention_mask": [[1] * len(i) + [0] * (width - len(i)) for i, _ in chunk]}


GROUP_MEGABATCH = 50  # at most this many micro-batches per length-sorted group (HF's LengthGroupedSampler: 50)


def length_grouped(order: Sequence[int], lengths: Sequence[int], micro_batch: int) -> list[int]:
    """``order`` (a shuffled permutation of the samples) regrouped so that each micro-batch holds samples of
    similar length, as ``group_by_length`` does in HF Trainer: consecutive groups of ``micro_batch * m``
    samples (``m = min(n // (4 * micro_batch), GROUP_MEGABATCH)``, at least 1), each sorted longest first,
    and the longest sample of all swapped into the first place so that the largest batch runs first (a batch
    that does not fit fails at step 1, not hours in). Still a permutation; random between groups."""
    n = len(order)
    mult = max(1, min(n // max(1, 4 * micro_batch), GROUP_MEGABATCH))
    size = micro_batch * mult
    groups = [sorted(order[k:k + size], key=lambda i: -lengths[i]) for k in range(0, n, size)]
    if groups:
        g = max(range(len(groups)), key=lambda k: lengths[groups[k][0]])
        groups[0][0], groups[g][0] = groups[g][0], groups[0][0]
    return [i for g in groups for i in g]
