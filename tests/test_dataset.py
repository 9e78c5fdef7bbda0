"""Dataset-aware planning (``ftplan.dataset``, ``ftplan --data``): every format ``ftplan train`` reads,
file:line errors, the model's tokenizer when it is on the machine and the stated approximation when not,
the length statistics, the sequence-length advice and the padding waste, by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ftplan.cli import app
from ftplan.dataset import (
    APPROX_BYTES_PER_TOKEN,
    CHAT_TOKENS_PER_MESSAGE,
    SEQ_STEP,
    advice,
    padding_waste,
    profile_data,
    recommend_seq_len,
)
from ftplan.errors import FtplanError


def _write(path: Path, rows: list) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_every_format_and_the_approximation(tmp_path):
    rows = [{"text": "a" * 40},                                   # 40 B -> 10 tokens + 1 (end of sequence)
            {"prompt": "b" * 8, "completion": "c" * 8},          # 16 B -> 4 + 1
            {"instruction": "d" * 12, "output": "e" * 4},  # in train's Alpaca template: 17 + 12 + 2 + 14 + 4 = 49 B -> 13 + 1
            {"messages": [{"role": "user", "content": "f" * 7}, {"role": "assistant", "content": "g" * 8}]}]
    p = profile_data(_write(tmp_path / "d.jsonl", rows))
    assert not p.exact and "approximation" in p.counted_with and APPROX_BYTES_PER_TOKEN == 4
    chat = 4 + 1 + 2 * CHAT_TOKENS_PER_MESSAGE  # "f*7\ng*8" = 16 B -> 4, + end, + the template per message
    assert sorted(p.lengths) == sorted([11, 5, 14, chat]) and p.samples == 4 and p.tokens == 30 + chat


def test_bad_lines_name_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"text": 3}\n')
    with pytest.raises(FtplanError, match=r"bad.jsonl:2: field 'text' must be a string"):
        profile_data(path)
    path.write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(FtplanError, match=r"bad.jsonl:2: not valid JSON"):
        profile_data(path)
    r = CliRunner().invoke(app, ["--model", "8b", "--gpu", "rtx4090", "--data", str(path)])
    assert r.exit_code == 2 and "bad.jsonl:2" in r.output


def test_the_models_own_tokenizer_when_it_is_here(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, "hello": 1, "world": 2}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    folder = tmp_path / "model"
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    assert tokenizers is not None
    p = profile_data(_write(tmp_path / "d.jsonl", [{"text": "hello world hello"}, {"text": "world"}]), str(folder))
    assert p.exact and "tokenizer" in p.counted_with
    assert sorted(p.lengths) == [1 + 1, 3 + 1]  # the words, and the end of sequence


def test_seq_len_advice_and_padding_waste(tmp_path):
    rows = [{"text": "x" * (4 * n - 4)} for n in [10] * 98 + [300, 1000]]  # lengths 10 (x98), 300, 1000 tokens
    p = profile_data(_write(tmp_path / "d.jsonl", rows))
    assert p.percentile(0.99) == 300 and p.lengths[-1] == 1000
    seq, cut = recommend_seq_len(p, 4096)
    assert seq == 384 and seq % SEQ_STEP == 0 and cut == 1  # 300 rounded up to 128s; the 1,000 is cut
    assert recommend_seq_len(p, 256) == (256, 2)  # the model's limit caps it
    a = advice(p, 4096, micro_batch=2)
    assert a["seq_len"] == 384 and a["padding_waste"] >= a["grouped_padding_waste"]


def test_cli_data_sets_tokens_and_length(tmp_path):
    data = _write(tmp_path / "d.jsonl", [{"text": "y" * (4 * n)} for n in range(20, 220)])
    r = CliRunner().invoke(app, ["--model", "8b", "--gpu", "rtx4090", "--data", data, "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    d = doc["data"]
    assert d["samples"] == 200 and d["advice"]["seq_len"] == 256 and doc["recommendation"]["config"]["seq_len"] == 256
    assert doc["tokens"] == pytest.approx(d["tokens_processed"], rel=1e-6)
    r = CliRunner().invoke(app, ["--model", "8b", "--gpu", "rtx4090", "--data", data, "--seq-len", "512"])
    assert r.exit_code == 0 and "sequence length 512 (given)" in r.output and "lengths: min 21" in r.output


def test_plan_and_report_take_the_data(tmp_path):
    import ftplan

    data = _write(tmp_path / "d.jsonl", [{"text": "y" * (4 * n)} for n in range(20, 220)])
    plans = ftplan.plan("8b", "rtx4090", data=data, top=1)
    assert plans and plans[0].config.seq_len == 256 and plans[0].estimate.cost is not None
    assert ftplan.plan("8b", "rtx4090", data=data, seq_len=512, top=1)[0].config.seq_len == 512
    from ftplan.reports.data import build

    r = build("8b", "rtx4090", None, data=data)
    assert r.data is not None and r.data["samples"] == 200 and r.options[0].plan.config.seq_len == 256
    with pytest.raises(FtplanError, match="--tokens .* or --data"):
        build("8b", "rtx4090", None)


def test_the_approximation_benchmark_runs_and_measures(tmp_path):
    """``benchmarks/token_approx.py`` on a word-level tokenizer and Alpaca/ShareGPT-shaped files: each word and
    punctuation mark a token, so the measured figures are known by hand."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("tokenizers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    (tmp_path / "toks" / "words").mkdir(parents=True)
    tok.save(str(tmp_path / "toks" / "words" / "tokenizer.json"))
    data = tmp_path / "data"
    data.mkdir()
    (data / "alpaca.json").write_text(json.dumps([{"instruction": "hello world", "input": "", "output": "hello world"}] * 5))
    (data / "chat_conversation.json").write_text(json.dumps(
        [{"conversations": [{"from": "human", "value": "hello"}, {"from": "gpt", "value": "world hello"}]}] * 3))
    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "r.json"
    p = subprocess.run([sys.executable, str(root / "benchmarks" / "token_approx.py"), "--tokenizers", str(tmp_path / "toks"),
                        "--data", str(data), "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    doc = json.loads(out.read_text())
    en = next(s for s in doc["summary"] if s["group"] == "en")
    # train's Alpaca text "### Instruction:\nhello world\n\n### Response:\nhello world": 55 bytes, 10 word-level
    # tokens ("###", "Instruction", ":", ...); exact 10 + end of sequence, approximate ceil(55 / 4) + 1
    assert en["samples"] == 5 and en["text_bytes_per_token"] == pytest.approx(55 / 10)
    assert en["total_ratio"] == pytest.approx((14 + 1) / (10 + 1))
    assert {s["group"] for s in doc["summary"]} == {"en", "chat"}


def test_length_grouped_order_by_hand():
    from ftplan.train.data import length_grouped

    lengths = [1, 5, 2, 8, 3, 7, 4, 6]
    # 8 samples, micro-batch 2: groups of 2 * min(8 // 8, 50) = 2, each longest first; the longest sample (3,
    # length 8) swapped into the first place
    assert length_grouped(range(8), lengths, 2) == [3, 0, 1, 2, 5, 4, 7, 6]
    order = [5, 2, 7, 0, 3, 6, 1, 4]
    out = length_grouped(order, lengths, 1)  # micro-batch 1: groups of min(8 // 4, 50) = 2
    assert sorted(out) == list(range(8)) and out[0] == 3


def test_grouped_padding_waste_measures_the_grouped_order(tmp_path):
    """100 samples of 10 tokens and 100 of 20, micro-batch 2: shuffled, about half the pairs mix the two
    lengths; grouped (groups of 50 sorted), at most one mixed pair per group: 4 x 10 padded tokens at most."""
    rows = [{"text": "x" * (4 * n - 4)} for n in [10] * 100 + [20] * 100]
    p = profile_data(_write(tmp_path / "d.jsonl", rows))
    assert padding_waste(p, 64, 2) > 0.10  # ~50 mixed pairs: 500 of 3,500 tokens
    assert padding_waste(p, 64, 2, grouped=True) <= 4 * 10 / (100 * 10 + 100 * 20)


def test_packing_is_decided_at_the_users_length(tmp_path):
    from ftplan.dataset import apply_data

    # lengths 129..640 tokens: padded to the longest at the recommended length, much is waste; cut to 128 tokens,
    # every sample fills its row and nothing is padded
    data = _write(tmp_path / "d.jsonl", [{"text": "z" * (4 * n)} for n in range(128, 640)])
    doc, _, seq = apply_data("8b", data)
    assert doc["advice"]["packing"] and doc["advice"]["padding_waste"] > 0.10
    doc, tokens, seq = apply_data("8b", data, seq_len=128)
    assert seq == 128 and doc["advice"]["padding_waste"] == 0 and doc["advice"]["packing"] is False
    assert tokens == doc["tokens_after_truncation"] == 512 * 128  # nothing padded, nothing more processed
