"""Data formats, validation with line numbers, completion-only labels, packing (no torch needed)."""

import json

import pytest

from ftplan.errors import FtplanError
from ftplan.train.data import IGNORE, batches, pack, parse_line, read_jsonl, suggest_seq_len, tokenize
from ftplan.train.tokenizer import BYTE_OFFSET, ByteTokenizer


def _write(tmp_path, lines):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_four_formats_parse(tmp_path):
    p = _write(tmp_path, [json.dumps({"text": "hi"}), json.dumps({"prompt": "a", "completion": "b"}),
                          json.dumps({"instruction": "do", "input": "x", "output": "y"}),
                          json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "r"}]})])
    ex = read_jsonl(p)
    assert [bool(e.messages) for e in ex] == [False, False, False, True]
    assert ex[1].segments == (("a", False), ("b", True))
    assert "### Input:\nx" in ex[2].segments[0][0] and ex[2].segments[1] == ("y", True)


@pytest.mark.parametrize("line,needle", [
    ("{not json", "not valid JSON"),
    (json.dumps({"foo": 1}), "no known fields"),
    (json.dumps({"prompt": 3, "completion": "x"}), "'prompt' must be a string"),
    (json.dumps({"messages": [{"role": "user", "content": "q"}]}), "no assistant message"),
    (json.dumps({"messages": [{"role": "robot", "content": "q"}]}), "messages[0]"),
    (json.dumps([1, 2]), "expected a JSON object"),
])
def test_bad_line_names_file_and_line(tmp_path, line, needle):
    p = _write(tmp_path, [json.dumps({"text": "ok"}), "", line])
    with pytest.raises(FtplanError) as e:
        read_jsonl(p)
    assert f"{p}:3" in str(e.value) and needle in str(e.value)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(FtplanError, match="does not exist"):
        read_jsonl(tmp_path / "nope.jsonl")
    (tmp_path / "e.jsonl").write_text("\n\n")
    with pytest.raises(FtplanError, match="no examples"):
        read_jsonl(tmp_path / "e.jsonl")


def test_completion_only_labels_by_hand():
    tok = ByteTokenizer(512)
    ids, labels = tokenize(parse_line({"prompt": "ab", "completion": "c"}, "x:1"), tok, 64)
    # bos, a, b, c, eos: loss on c and eos only
    assert ids == [1, ord("a") + BYTE_OFFSET, ord("b") + BYTE_OFFSET, ord("c") + BYTE_OFFSET, 2]
    assert labels == [IGNORE, IGNORE, IGNORE, ord("c") + BYTE_OFFSET, 2]


def test_chat_loss_on_assistant_turns_only():
    tok = ByteTokenizer(512)
    ex = parse_line({"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}, "x:1")
    ids, labels = tokenize(ex, tok, 256)
    trained = tok.decode([t for t in labels if t != IGNORE])
    assert trained == "<|assistant|>\na\n"


def test_truncation_and_packing():
    tok = ByteTokenizer(512)
    ids, labels = tokenize(parse_line({"text": "x" * 100}, "x:1"), tok, 16)
    assert len(ids) == len(labels) == 16
    rows = [([1, 2, 3], [1, 2, 3]), ([4, 5], [IGNORE, 5]), ([6, 7, 8, 9], [6, 7, 8, 9])]
    packed = pack(rows, 4)
    assert packed == [([1, 2, 3, 4], [1, 2, 3, IGNORE]), ([5, 6, 7, 8], [5, 6, 7, 8])]


def test_batches_pad_to_longest():
    rows = [([1, 2, 3], [1, 2, 3]), ([4], [4])]
    (b,) = list(batches(rows, 2, 0, [0, 1]))
    assert b["input_ids"] == [[1, 2, 3], [4, 0, 0]]
    assert b["labels"][1] == [4, IGNORE, IGNORE] and b["attention_mask"][1] == [1, 0, 0]


def test_suggest_seq_len_powers_of_two_within_limit():
    assert suggest_seq_len(10, 4096) == 64
    assert suggest_seq_len(300, 4096) == 512
    assert suggest_seq_len(5000, 4096) == 4096


def test_byte_tokenizer_needs_vocab():
    with pytest.raises(FtplanError, match="at least 259"):
        ByteTokenizer(100)
