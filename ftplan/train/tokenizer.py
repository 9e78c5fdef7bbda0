"""Tokenizers for training: the model's own (transformers), or a byte-level one for models built from
a config with random weights (nothing to download).

Both expose ``encode(text)``, ``prefix_ids()``, ``eos_id``, ``pad_id`` and ``chat_segments(messages)``:
the conversation as (text, is_assistant) pieces, so that the loss covers the assistant turns only.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import FtplanError

BYTE_OFFSET = 3  # ids 0, 1, 2: pad, bos, eos; byte b is id b + 3
SIMPLE_TEMPLATE = "<|{role}|>\n{content}\n"


class ByteTokenizer:
    """UTF-8 bytes as ids: deterministic, no files; for smoke tests and synthetic-weight runs."""

    pad_id, bos_id, eos_id = 0, 1, 2

    def __init__(self, vocab: int) -> None:
        if vocab < 256 + BYTE_OFFSET:
            raise FtplanError(f"the byte tokenizer needs a vocabulary of at least {256 + BYTE_OFFSET}; "
                              f"the model has {vocab}")
        self.vocab = vocab

    def encode(self, text: str) -> list[int]:
        return [b + BYTE_OFFSET for b in text.encode("utf-8")]

    def decode(self, ids: list[int]) -> str:
        return bytes(i - BYTE_OFFSET for i in ids if BYTE_OFFSET <= i < 256 + BYTE_OFFSET).decode("utf-8", "replace")

    def prefix_ids(self) -> list[int]:
        return [self.bos_id]

    def chat_segments(self, messages) -> list[tuple[str, bool]]:
        return [(SIMPLE_TEMPLATE.format(**m), m["role"] == "assistant") for m in messages]

    def save(self, folder: Path) -> None:
        (folder / "ftplan_tokenizer.txt").write_text(f"byte-level, offset {BYTE_OFFSET}, vocab {self.vocab}\n")


class HFTokenizer:
    """A transformers tokenizer; chat examples use its chat template."""

    def __init__(self, tok) -> None:
        self.tok = tok
        self.eos_id = tok.eos_token_id
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)

    def encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def prefix_ids(self) -> list[int]:
        return [self.tok.bos_token_id] if self.tok.bos_token_id is not None else []

    def chat_segments(self, messages) -> list[tuple[str, bool]]:
        if not getattr(self.tok, "chat_template", None):
            return [(SIMPLE_TEMPLATE.format(**m), m["role"] == "assistant") for m in messages]
        out, prev = [], ""
        for i, m in enumerate(messages):
            text = self.tok.apply_chat_template(list(messages[: i + 1]), tokenize=False)
            piece = text[len(prev):] if text.startswith(prev) else text
            out.append((piece, m["role"] == "assistant"))
            prev = text
        return out

    def save(self, folder: Path) -> None:
        self.tok.save_pretrained(folder)


def load_tokenizer(model: str, vocab: int, synthetic: bool, hf_id: str = ""):
    """The model's tokenizer when its folder (or the HF cache) has one; the byte tokenizer otherwise
    for synthetic weights; an error otherwise."""
    p = Path(model).expanduser()
    local = p.exists()
    folder = p.parent if p.suffix == ".json" else p
    has_files = local and any((folder / f).exists() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"))
    if synthetic and not has_files:
        return ByteTokenizer(vocab)
    try:
        import transformers

        src = str(folder) if local else (model if "/" in model or not hf_id else hf_id)  # an alias means its HF id
        if not local:
            from ..profiles.hf_config import offline_if_unreachable

            offline_if_unreachable()  # no network: the cache only, at once
        tok = transformers.AutoTokenizer.from_pretrained(src)
        return HFTokenizer(tok)
    except Exception as e:  # noqa: BLE001 - any loader failure is the same missing-files problem for the user
        raise FtplanError(f"no tokenizer found for {model!r} ({type(e).__name__}); a model folder needs its "
                          "tokenizer files, or use --synthetic-weights for a smoke run") from None
