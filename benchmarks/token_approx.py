"""How far the token count without the model's tokenizer (``ftplan.dataset.approx_tokens``: UTF-8 bytes
/ 4) is from the real tokenizers' counts, on real instruction, chat and code data.

    python benchmarks/token_approx.py --tokenizers DIR --data DIR [--out PATH]

``--tokenizers``: a folder of ``<name>/tokenizer.json`` (Hugging Face ``tokenizers`` files); ``--data``:
JSON or JSONL files in the Alpaca (instruction/input/output or response), ShareGPT (``conversations``),
self-instruct seed (``instances``) or MT-Bench (``turns``) layouts, converted to ``ftplan train``'s formats
first. Every sample is counted the way ``ftplan --data`` counts it (``dataset.profile_data``): once with the
tokenizer, once without. Printed per tokenizer and data group: the ratio of the approximate to the exact
total (what time and cost rest on), the per-sample median and 90th-percentile |error|, and the ratio of the
99th-percentile lengths (what the recommended sequence length rests on). Which files were used (repositories,
commits, how the tokenizer files were obtained): ``benchmarks/data/token_approx.md``. Results go to
``results/token_approx.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ftplan import dataset as D  # noqa: E402
from ftplan.train.data import iter_examples  # noqa: E402

GROUPS = {"zh": ("_zh",), "code": ("code",), "chat": ("conversation", "toolcall", "mt_bench")}


def group_of(name: str) -> str:
    for g, keys in GROUPS.items():
        if any(k in name for k in keys):
            return g
    return "en"


def _records(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    data = json.loads(text)
    return data if isinstance(data, list) else [data]


def convert(rec: dict) -> dict | None:
    """One record in ``ftplan train``'s formats (None when it has no text)."""
    if "conversations" in rec:
        role = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                "function_call": "assistant", "observation": "user", "system": "system"}
        msgs = [{"role": role.get(m.get("from", ""), "user"), "content": str(m.get("value", ""))}
                for m in rec["conversations"]]
        return {"messages": msgs} if any(m["role"] == "assistant" for m in msgs) else None
    if "turns" in rec:  # questions only (no answers to train on): plain text
        return {"text": "\n".join(str(t) for t in rec["turns"])}
    if "instances" in rec:
        inst = (rec["instances"] or [{}])[0]
        return {"instruction": rec.get("instruction", ""), "input": inst.get("input", ""), "output": inst.get("output", "")}
    if "instruction" in rec:
        return {"instruction": rec["instruction"], "input": rec.get("input", ""),
                "output": rec.get("output", rec.get("response", ""))}
    return None


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]


def compare(jsonl: Path, tok_dir: Path) -> dict:
    """Exact and approximate counts of one file with one tokenizer, through ``profile_data`` for the
    distribution and per sample for the errors."""
    from tokenizers import Tokenizer

    exact = D.profile_data(jsonl, model=str(tok_dir), progress=False)
    approx = D.profile_data(jsonl, progress=False)
    assert exact.exact and not approx.exact
    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    errs = []
    text_bytes = text_tokens = 0
    for _, ex in iter_examples(jsonl):
        text, add = D.sample_text(ex)
        n = len(tok.encode(text, add_special_tokens=False).ids)
        text_bytes, text_tokens = text_bytes + len(text.encode("utf-8")), text_tokens + n
        e = len(tok.encode(text, add_special_tokens=True).ids) + add + 1
        a = D.approx_tokens(text) + add + 1
        errs.append(abs(a - e) / e)
    return {"samples": exact.samples, "exact_tokens": exact.tokens, "approx_tokens": approx.tokens,
            "total_ratio": approx.tokens / exact.tokens, "median_abs_error": statistics.median(errs),
            "p90_abs_error": _pct(errs, 0.9), "p99_ratio": approx.percentile(0.99) / exact.percentile(0.99),
            "text_bytes_per_token": text_bytes / text_tokens}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizers", required=True, help="folder of <name>/tokenizer.json")
    ap.add_argument("--data", required=True, help="folder of JSON/JSONL data files")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "token_approx.json"))
    a = ap.parse_args()
    from tokenizers import Tokenizer

    t0 = time.perf_counter()
    toks = sorted(p.parent for p in Path(a.tokenizers).glob("*/tokenizer.json"))
    files = sorted(p for p in Path(a.data).iterdir() if p.suffix in (".json", ".jsonl"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        converted = {}
        for f in files:
            recs = [r for r in (convert(x) for x in _records(f)) if r]
            out = Path(tmp) / (f.stem + ".jsonl")
            out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
            converted[f.name] = out
        for td in toks:
            vocab = Tokenizer.from_file(str(td / "tokenizer.json")).get_vocab_size()
            by_group: dict[str, list[dict]] = {}
            for name, path in converted.items():
                r = {"tokenizer": td.name, "vocab": vocab, "data": name, "group": group_of(name),
                     **compare(path, td)}
                rows.append(r)
                by_group.setdefault(r["group"], []).append(r)
    print(f"{'tokenizer':16} {'vocab':>7} {'group':5} {'B/tok':>5} {'samples':>8} {'total ratio':>11} "
          f"{'median |err|':>12} {'p90 |err|':>9} {'p99 ratio':>9}")
    summary = []
    for td in toks:
        for g in ("en", "chat", "code", "zh"):
            rs = [r for r in rows if r["tokenizer"] == td.name and r["group"] == g]
            if not rs:
                continue
            n = sum(r["samples"] for r in rs)
            ratio = sum(r["approx_tokens"] for r in rs) / sum(r["exact_tokens"] for r in rs)
            med = statistics.median(r["median_abs_error"] for r in rs)
            p90 = max(r["p90_abs_error"] for r in rs)
            p99 = statistics.median(r["p99_ratio"] for r in rs)
            bpt = statistics.median(r["text_bytes_per_token"] for r in rs)
            summary.append({"tokenizer": td.name, "vocab": rs[0]["vocab"], "group": g, "samples": n,
                            "total_ratio": ratio, "median_abs_error": med, "p90_abs_error": p90, "p99_ratio": p99,
                            "text_bytes_per_token": bpt})
            print(f"{td.name:16} {rs[0]['vocab']:>7} {g:5} {bpt:>5.2f} {n:>8,} {ratio:>11.3f} "
                  f"{med:>11.1%} {p90:>9.1%} {p99:>9.3f}")
    en = [s for s in summary if s["group"] in ("en", "chat")]
    errs = [abs(s["total_ratio"] - 1) for s in en]
    line = (f"English and chat data, {len(toks)} tokenizers: total-token error median {statistics.median(errs):.1%}, "
            f"max {max(errs):.1%}; p99 length ratio {min(s['p99_ratio'] for s in en):.2f}-"
            f"{max(s['p99_ratio'] for s in en):.2f}")
    print(line)
    from ftplan.atomic import atomic_write_text

    doc = {"command": "python benchmarks/token_approx.py --tokenizers TOKENIZERS --data DATA",
           "sources": "benchmarks/data/token_approx.md", "summary_line": line, "summary": summary, "rows": rows,
           "seconds": round(time.perf_counter() - t0, 1)}
    atomic_write_text(Path(a.out), json.dumps(doc, indent=1) + "\n")
    print(f"saved {a.out} ({doc['seconds']} s)")


if __name__ == "__main__":
    main()
