"""Know the user's data before planning: how many tokens it holds, how long its samples are, which sequence
length covers them, and what padding would waste (``ftplan --data train.jsonl``, ``plan(..., data=...)``).

The file is read as ``ftplan train`` reads it (``train.data.parse_line``: text, prompt/completion,
instruction/input/output, chat messages; a bad line is an error naming file and line), streaming, one line
at a time. Tokens are counted with the model's own tokenizer when its ``tokenizer.json`` is on this machine
(a model folder, or the Hugging Face cache), through the ``tokenizers`` library only; otherwise with
``APPROX_BYTES_PER_TOKEN`` (UTF-8 bytes per token), and the answer says so. Chat samples add
``CHAT_TOKENS_PER_MESSAGE`` per message for the template's role markers.

Recommendations (each stated with its numbers):
- the sequence length: the 99th percentile, rounded up to a multiple of ``SEQ_STEP``, within the model's
  context limit; how many samples it truncates;
- packing or padding: the share of padded tokens a shuffled padded batch of ``micro_batch`` would waste
  (measured on the file's own lengths with a fixed seed), with and without length-grouped batching (the
  grouping ``ftplan train --group-by-length`` runs); above ``PACKING_WASTE``, packing is recommended and
  grouping offered with its own waste;
- memory is then planned for the longest batch the collation produces: with padding, a micro-batch of
  samples padded to the longest, at most the recommended length (the plan's ``seq_len``); packed, every
  sequence is exactly that length.
"""

from __future__ import annotations

import math
import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .atomic import check_input
from .errors import FtplanError
from .inverse import SEQ_STEP, seq_cap  # lengths in the same steps as the inverse questions

# Without the model's tokenizer: UTF-8 bytes per token. Measured (benchmarks/token_approx.py, 8 tokenizers:
# Llama 3, Qwen2, Llama 2, Mistral, Phi-3, GPT-2, GPT-NeoX, SmolLM; real Alpaca, chat, code and Chinese data):
# English and chat text 3.7-4.9 bytes per token (total within 20%, median 7.8%), code 2.8-3.9 (under-counted
# by up to 30%), Chinese 1.5-4.6. Stated with every answer that uses it.
APPROX_BYTES_PER_TOKEN = 4.0
CHAT_TOKENS_PER_MESSAGE = 4  # role markers and separators a chat template adds per message (approximate)
PACKING_WASTE = 0.10  # recommend packing when padding would waste more than this share of the tokens
PROGRESS_BYTES = 64 * 2**20  # show progress on files larger than this
BATCH = 1000  # texts per tokenizer call


@dataclass(frozen=True)
class DataProfile:
    path: str
    samples: int
    tokens: int
    lengths: tuple[int, ...] = field(repr=False)  # sorted
    counted_with: str  # "tokenizer <path>" or the approximation
    exact: bool

    def percentile(self, q: float) -> int:
        xs = self.lengths
        return xs[min(len(xs) - 1, max(0, int(math.ceil(q * len(xs))) - 1))]

    def summary(self) -> dict[str, Any]:
        return {"samples": self.samples, "tokens": self.tokens, "min": self.lengths[0],
                "median": self.percentile(0.5), "p90": self.percentile(0.9), "p99": self.percentile(0.99),
                "max": self.lengths[-1], "counted_with": self.counted_with, "exact": self.exact}


def find_tokenizer(model: str | None, hf_id: str = "") -> Path | None:
    """The model's ``tokenizer.json`` on this machine: in a model folder, else in the Hugging Face cache
    (``$HF_HUB_CACHE`` or ``$HF_HOME/hub``, default ``~/.cache/huggingface/hub``); None when there is none."""
    if model and Path(model).is_dir() and (Path(model) / "tokenizer.json").is_file():
        return Path(model) / "tokenizer.json"
    if not hf_id:
        return None
    hub = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.join(os.path.expanduser("~"), ".cache", "huggingface")), "hub")
    snaps = Path(hub) / f"models--{hf_id.replace('/', '--')}" / "snapshots"
    if snaps.is_dir():
        for snap in sorted(snaps.iterdir(), reverse=True):
            if (snap / "tokenizer.json").is_file():
                return snap / "tokenizer.json"
    return None


def approx_tokens(text: str) -> int:
    """Tokens of ``text`` without a tokenizer: ``ceil(UTF-8 bytes / APPROX_BYTES_PER_TOKEN)``, at least 1.
    Measured against 8 real tokenizers (``benchmarks/token_approx.py``): see ``APPROX_BYTES_PER_TOKEN``."""
    return max(1, math.ceil(len(text.encode("utf-8")) / APPROX_BYTES_PER_TOKEN))


def sample_text(ex) -> tuple[str, int]:
    """(the example's text, the template tokens it adds)."""
    if ex.messages:
        return "\n".join(str(m.get("content", "")) for m in ex.messages), CHAT_TOKENS_PER_MESSAGE * len(ex.messages)
    return "".join(t for t, _ in ex.segments), 0


def profile_data(path: str | Path, model: str | None = None, hf_id: str = "", progress: bool | None = None) -> DataProfile:
    """Read ``path`` (JSONL in ``ftplan train``'s formats) and count each sample's tokens."""
    from .train.data import iter_examples

    p = check_input(path, "data file")
    tok_path = find_tokenizer(model, hf_id)
    encode = None
    if tok_path is not None:
        try:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(tok_path))
            encode = lambda texts: [len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=True)]  # noqa: E731
        except Exception:  # noqa: BLE001 - an unreadable tokenizer file: fall back, and say so
            encode, tok_path = None, None
    size = p.stat().st_size
    show = (size > PROGRESS_BYTES) if progress is None else progress
    lengths: list[int] = []
    pending: list[str] = []
    extra: list[int] = []

    def flush() -> None:
        if encode is not None:
            lengths.extend(n + e for n, e in zip(encode(pending), extra, strict=True))
        pending.clear()
        extra.clear()

    for n, (done, ex) in enumerate(iter_examples(p), 1):
        text, add = sample_text(ex)
        if encode is None:
            lengths.append(approx_tokens(text) + add + 1)
        else:
            pending.append(text)
            extra.append(add + 1)
            if len(pending) >= BATCH:
                flush()
        if show and n % 100_000 == 0:
            print(f"\rreading {p.name}: {done / size:.0%} ({n:,} samples)", end="", file=sys.stderr, flush=True)
    flush()
    if show:
        print(f"\rreading {p.name}: done ({len(lengths):,} samples)        ", file=sys.stderr, flush=True)
    if not lengths:
        raise FtplanError(f"data file {str(path)!r} has no examples")
    lengths.sort()
    how = (f"the model's tokenizer ({tok_path.name} in {tok_path.parent.name})" if tok_path is not None else
           f"an approximation: UTF-8 bytes / {APPROX_BYTES_PER_TOKEN:g} per token (no tokenizer.json for this model "
           "on this machine)")
    return DataProfile(str(path), len(lengths), sum(lengths), tuple(lengths), how, tok_path is not None)


def recommend_seq_len(prof: DataProfile, max_positions: int) -> tuple[int, int]:
    """(the sequence length covering the 99th percentile, a multiple of ``SEQ_STEP`` within the model's
    limit; how many samples it truncates)."""
    s = min(seq_cap(max_positions), max(SEQ_STEP, math.ceil(prof.percentile(0.99) / SEQ_STEP) * SEQ_STEP))
    truncated = sum(1 for x in prof.lengths if x > s)
    return s, truncated


def padding_waste(prof: DataProfile, seq_len: int, micro_batch: int, grouped: bool = False, seed: int = 0) -> float:
    """The share of a padded batch's tokens that are padding: samples cut at ``seq_len``, batched
    ``micro_batch`` at a time in a shuffled order (or, ``grouped``, the length-grouped order of ``ftplan train
    --group-by-length``), each batch padded to its longest sample."""
    xs = [min(x, seq_len) for x in prof.lengths]
    random.Random(seed).shuffle(xs)
    if grouped:  # the order ftplan train --group-by-length makes (train.data.length_grouped)
        from .train.data import length_grouped

        xs = [xs[i] for i in length_grouped(range(len(xs)), xs, micro_batch)]
    real = padded = 0
    for k in range(0, len(xs), micro_batch):
        chunk = xs[k:k + micro_batch]
        real += sum(chunk)
        padded += max(chunk) * len(chunk)
    return 1.0 - real / padded if padded else 0.0


def histogram_bins(prof: DataProfile, bins: int = 10) -> list[tuple[int, int, int]]:
    """(first length, last length, samples) of equal-width bins from the shortest to the longest sample."""
    lo, hi = prof.lengths[0], prof.lengths[-1]
    step = max(1, math.ceil((hi - lo + 1) / bins))
    counts = [0] * bins
    for x in prof.lengths:
        counts[min(bins - 1, (x - lo) // step)] += 1
    return [(lo + i * step, lo + (i + 1) * step - 1, c) for i, c in enumerate(counts)]


def histogram(bins: list[tuple[int, int, int]], width: int = 40) -> list[str]:
    """``histogram_bins`` as a small text histogram."""
    top = max(c for _, _, c in bins) or 1
    return [f"{a:>8,}-{b:<8,} {'#' * max(1 if c else 0, round(width * c / top)):<{width}} {c:,}" for a, b, c in bins]


def advice(prof: DataProfile, max_positions: int, micro_batch: int = 4, seq_len: int | None = None) -> dict[str, Any]:
    """The recommendations of the module docstring, as figures; with ``seq_len`` (the user's), truncation,
    padding and the packing advice at that length instead of the recommended one."""
    rec, cut = recommend_seq_len(prof, max_positions)
    seq = seq_len or rec
    if seq != rec:
        cut = sum(1 for x in prof.lengths if x > seq)
    shuffled = padding_waste(prof, seq, micro_batch)
    grouped = padding_waste(prof, seq, micro_batch, grouped=True)
    return {"seq_len": seq, "truncated": cut, "covers": "p99" if rec < max_positions else "the model's limit",
            "padding_waste": shuffled, "grouped_padding_waste": grouped, "micro_batch_for_waste": micro_batch,
            "packing": shuffled > PACKING_WASTE}


def apply_data(model: str, path: str | Path, tokens: str | float | None = None, seq_len: int | None = None,
               micro_batch: int | None = None) -> tuple[dict[str, Any], str | float, int]:
    """The data's profile and advice (a JSON-able dict), and the tokens per epoch and sequence length a plan
    then uses: the user's when given, else the recommended length and the tokens the training processes
    (the padded ones when padding is advised)."""
    from .profiles.models import get_model

    spec = get_model(model)
    prof = profile_data(path, model, spec.hf_id)
    adv = advice(prof, spec.max_positions, micro_batch or 4, seq_len)  # at the user's length when given
    seq = adv["seq_len"]
    kept = sum(min(x, seq) for x in prof.lengths)
    processed = kept if adv["packing"] else kept / max(1e-9, 1.0 - adv["padding_waste"])
    bins = histogram_bins(prof)
    doc = {"path": str(path), **prof.summary(), "advice": adv, "tokens_after_truncation": kept,
           "tokens_processed": processed, "bins": [list(b) for b in bins], "histogram": histogram(bins),
           "tokens_given": tokens is not None, "seq_len_given": seq_len is not None}
    return doc, (tokens if tokens is not None else float(int(processed))), seq
