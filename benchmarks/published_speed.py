"""Predicted training tokens/s against published measured throughput.

Reads ``benchmarks/data/published_speed.csv`` (sources and how each figure was measured in
``published_speed.md``) and, when it is beside the repository, the throughput column of
``shared/reference/published_memory_dev.csv``. Each row is predicted with ``ftplan.estimate`` (no
calibration) using the run's settings, and compared per GPU.

Row selection (``--all`` prints the reason for every excluded row): a measured figure; a dense decoder in
the catalog; a catalog GPU with a speed model; micro-batch and sequence length stated; fixed-length or
packed data (as ``published.py``: with unpacked samples the sequence length is only a cap, and the real
work per token unknown); not DoRA or optimizer-in-backward (not modelled).

Groups: rows that run the plain stack the planner models (PyTorch eager, HF/PEFT/bitsandbytes or a native
PyTorch trainer) make the headline. Rows with special kernels (Unsloth, Liger, fused or compiled ops, fp8)
are predicted and shown separately: the model does not know their kernels, and says so.

No constant of the model is fitted to these rows; the rows over 30% are listed with the probable reason.

``--write-band`` writes the headline's 10th and 90th percentiles of measured/predicted tokens/s to
``ftplan/profiles/data/speed_band.json``: the range every shown time and cost carries
(``ftplan.planner.bands``).

    python benchmarks/published_speed.py [--all] [--write-band] [--out PATH]
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from published import _first_int, _optimizer, _pct, _targets  # noqa: E402

import ftplan  # noqa: E402
from ftplan.atomic import atomic_write_text  # noqa: E402
from ftplan.errors import FtplanError  # noqa: E402
from ftplan.stack.env import versions  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks" / "data" / "published_speed.csv"
SHARED = ROOT.parent / "shared" / "reference" / "published_memory_dev.csv"
BAND = ROOT / "ftplan" / "profiles" / "data" / "speed_band.json"

# (needle in the lower-cased GPU text, catalog key), first match wins: specific names before families
GPUS = (("h200", "h200"), ("gh200", "gh200"), ("h100 nvl", "h100-nvl"), ("h100 pcie", "h100-pcie"), ("h100", "h100-sxm"),
        ("a100 40gb pcie", "a100-40gb-pcie"), ("a100-40gb-pcie", "a100-40gb-pcie"), ("a100 80gb pcie", "a100-80gb-pcie"),
        ("a100-pcie", "a100-80gb-pcie"), ("a100 40", "a100-40gb"), ("a100-40", "a100-40gb"), ("a100", "a100-80gb"),
        ("a10g", "a10g"), ("a10 ", "a10"), ("l40s", "l40s"), ("l40", "l40"), ("l4", "l4"), ("6000 ada", "rtx6000ada"),
        ("rtx 6000 ada", "rtx6000ada"), ("a6000", "a6000"), ("a5000", "a5000"), ("a4000", "a4000"),
        ("4090", "rtx4090"), ("4080", "rtx4080"), ("3090 ti", "rtx3090ti"), ("3090", "rtx3090"), ("3080", "rtx3080"),
        ("3060", "rtx3060"), ("5090", "rtx5090"), ("t4", "t4"), ("v100", "v100-32gb"), ("b200", "b200"),
        ("mi300x", "mi300x"))
SPECIAL = ("unsloth", "liger", "fused", "compile", "fp8", "triton", "flashattention-3", "apex", "transformer engine")


def gpu_key(text: str) -> str | None:
    g = " " + (text or "").lower() + " "
    for needle, key in GPUS:
        if needle in g:
            return key
    return None


def _parallel(r: dict, n: int) -> tuple[str | None, str]:
    p = (r.get("parallelism") or "").lower()
    if n == 1 or p in ("", "single", "none"):
        return (None if n == 1 else "ddp"), ""
    if "zero-3" in p or "zero3" in p:
        return "zero3", ""
    if "zero-2" in p or "zero2" in p:
        return "zero2", ""
    if "zero-1" in p or "zero1" in p:
        return "zero1", ""
    if "fsdp" in p or "fully_shard" in p:
        return "fsdp", ""
    if "ddp" in p or "data parallel" in p:
        return "ddp", ""
    return None, f"parallelism not modelled ({r.get('parallelism')})"


def special_kernels(r: dict) -> str:
    """The special kernels a row names ('' for the plain stack)."""
    text = " ".join((r.get("kernels") or "", r.get("framework") or "", r.get("torch_compile") or "",
                     r.get("precision") or "")).lower()
    if (r.get("torch_compile") or "").lower().startswith("yes"):
        return "torch.compile"
    hits = [k for k in SPECIAL if k in text and not re.search(rf"no {k}|{k}: no|without {k}", text)]
    return ", ".join(hits)


def row_knobs(r: dict) -> tuple[dict | None, str]:
    """(model, gpu key, estimate keyword arguments, GPUs, per-GPU published tokens/s) or (None, why)."""
    tps = _num(r.get("tokens_per_s") or r.get("throughput_tok_s"))
    if not tps:
        return None, "no throughput figure"
    if "estimat" in (r.get("measured_or_estimated") or "").lower():
        return None, "not a measurement"
    text = " ".join((r.get("notes") or "", r.get("other_memory_settings") or "", r.get("method") or "")).lower()
    if "dora" in text.replace("adorable", ""):
        return None, "DoRA (a LoRA variant with its own magnitude computation) not modelled"
    if "optimizer_in_bwd=true" in text.replace(" ", ""):
        return None, "optimizer-in-backward not modelled"
    try:
        model = ftplan.get_model(r.get("hf_model_id") or r["model"])
    except FtplanError:
        try:
            model = ftplan.get_model(r["model"])
        except FtplanError:
            return None, f"not a catalog model ({r.get('hf_model_id') or r['model']})"
    if model.is_moe:
        return None, "MoE"
    gpu = gpu_key(r["gpu"])
    if gpu is None:
        return None, f"GPU not in the catalog ({r['gpu'][:40]})"
    lengths = " ".join((r.get("padding_note") or "", r.get("seq_len_note") or "")).lower()
    if "unpacked" in lengths or "truncation cap" in lengths:  # the rule of published.py (memory)
        return None, "unpacked data: seq_len is only a maximum (the real lengths, and the work per token, are unknown)"
    mb, seq = _first_int(r["micro_batch"]), _first_int(r["seq_len"])
    if not mb or not seq or "not stated" in (r["micro_batch"] + r["seq_len"]).lower():
        return None, "micro-batch or sequence length not stated"
    n = _first_int(r.get("num_gpus") or "1") or 1
    sharding, why = _parallel(r, n)
    if why:
        return None, why
    method = (r["method"] or "").split()[0].lower()
    if method not in ("full", "lora", "qlora"):
        return None, f"method not modelled ({r['method']})"
    q = (r.get("quant") or "").lower()
    prec = (r.get("precision") or "").lower()
    base = "fp16" if "fp16" in prec and "bf16" not in prec else "bf16"
    quant = "nf4" if ("nf4" in q or method == "qlora") else ("int8" if "int8" in q else base)
    ck = (r.get("grad_checkpointing") or "").lower()
    fw = r.get("framework") or ""
    knobs: dict = dict(method=method, quant=quant, micro_batch=mb, seq_len=seq,
                       grad_accum=_first_int(r.get("grad_accum") or "1") or 1,
                       gradient_checkpointing=not ck.startswith("no"), optimizer=_optimizer(r.get("optimizer", ""), fw),
                       attention=_attention(r.get("attention", "")), num_gpus=n)
    if sharding:
        knobs["sharding"] = sharding
    if method != "full":
        knobs["lora_rank"] = _first_int(r.get("lora_r") or "") or 8
        targets = re.sub(r"\(.*?\)", "", r.get("lora_targets") or "")  # drop remarks such as "(c_attn also listed)"
        knobs["lora_targets"] = _targets(targets + " " + fw)
    if "pure" in prec or fw.lower().startswith("torchtune"):
        knobs.update(prepare_kbit=False, autocast=False)
    scope = (r.get("tokens_per_s_scope") or "per GPU").lower()
    if n > 1 and "not stated" in scope:
        return None, "several GPUs, and the source does not say whether the figure is per GPU or in total"
    per_gpu = tps / n if ("total" in scope or "all" in scope) else tps
    return {"model": model.name, "gpu": gpu, "knobs": knobs, "gpus": n, "published": per_gpu}, ""


def _attention(s: str) -> str:
    s = (s or "").lower()
    if "eager" in s:
        return "eager"
    if "flash" in s and "sdpa" not in s:
        return "flash_attention_2"
    return "sdpa"


def _num(s: str | None) -> float | None:
    try:
        v = float(str(s or "").replace(",", "").strip())
    except ValueError:
        return None
    return v if v > 0 else None


def read_rows() -> list[dict]:
    rows: list[dict] = []
    with DATA.open(newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            rows.append({**r, "_file": "published_speed.csv"})
    if SHARED.exists():
        with SHARED.open(newline="", encoding="utf-8") as f:
            for r in csv.DictReader(f):
                if (r.get("throughput_tok_s") or "").strip():
                    rows.append({**r, "_file": "shared published_memory_dev.csv", "tokens_per_s": r["throughput_tok_s"],
                                 "tokens_per_s_scope": "per GPU" if "per gpu" in r.get("throughput_note", "").lower()
                                 else "not stated", "kernels": _shared_kernels(r)})
    return rows


def _shared_kernels(r: dict) -> str:
    other = (r.get("other_memory_settings") or "").lower()
    return "torch.compile" if "compile=true" in other.replace(" ", "") or "compile: true" in other else ""


# Probable reasons for rows over 30%, written after reading each source (never used by the model).
REASONS: dict[str, str] = {
    "2041": "70B QLoRA under FSDP1 on 2 cloud RTX 6000 Ada: 35 GB of packed weights gathered twice per micro-batch over "
            "an interconnect the source does not state; ftplan assumes PCIe 4.0 and full overlap of the gathers",
    "2042": "as 2041 (micro-batch 3)",
    "2044": "70B QLoRA, FSDP1 on 8 x A100 40GB: as 2041, the gathers of a 70B model per micro-batch of 2K tokens "
            "(grad-accum not stated, recorded as 1)",
    "2045": "70B QLoRA, FSDP1 on 4 x H100: as 2044; the source's own text says the run was not compute-bound",
    "2059": "Qwen-72B LoRA under ZeRO-3 on 4 A100s: per-GPU batch 1 and accumulation 8 are assumed (not stated); "
            "ZeRO-3 gathers 144 GB of 16-bit weights twice per micro-batch",
}


def evaluate(r: dict) -> dict:
    knobs, why = row_knobs(r)
    rid = r.get("row_id", "?")
    if knobs is None:
        return {"row": rid, "status": "excluded", "reason": why}
    try:
        est = ftplan.estimate(knobs["model"], knobs["gpu"], calibrate=False, **knobs["knobs"])
    except FtplanError as e:
        return {"row": rid, "status": "failed", "reason": str(e)}
    if est.time is None:
        return {"row": rid, "status": "failed", "reason": "no speed estimate for this GPU"}
    pred = est.time.tokens_per_s / knobs["gpus"]
    pub = knobs["published"]
    top = sorted(est.time.pieces, key=lambda p: -p[1])[:3]
    total = sum(p[1] for p in est.time.pieces) or 1.0
    return {"row": rid, "status": "ok", "file": r["_file"], "source": r.get("source_group") or r.get("source", "")[:24],
            "model": knobs["model"], "gpu": knobs["gpu"], "gpus": knobs["gpus"], "knobs": knobs["knobs"],
            "special": special_kernels(r), "published": pub, "predicted": pred, "error": pred / pub - 1.0,
            "ratio": pub / pred, "bound": est.time.bound, "mfu": est.time.efficiency,
            "pieces": ", ".join(f"{n} {s / total:.0%}" for n, s, _ in top), "rates": est.time.notes[0]}


def _describe(k: dict) -> str:
    m = k["method"] + ("" if k["method"] == "full" else f" r{k.get('lora_rank')}")
    return (f"{m} {k['quant']} b{k['micro_batch']}x{k['seq_len']}{' gc' if k['gradient_checkpointing'] else ''}"
            f"{' ' + k['sharding'] if k.get('sharding') else ''}")


def summary(errs: list[float]) -> str:
    a = [abs(e) for e in errs]
    return (f"median |error| {statistics.median(a):.1%}, 90th percentile {_pct(a, 0.9):.1%}, max {max(a):.1%}, "
            f"signed median {statistics.median(errs):+.1%}") if a else "no row"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--all", action="store_true", help="list every excluded row with its reason")
    ap.add_argument("--write-band", action="store_true", help="write the headline's 10th-90th percentile band")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "published_speed.json"))
    a = ap.parse_args()
    res = [evaluate(r) for r in read_rows()]
    ok = [x for x in res if x["status"] == "ok"]
    plain = [x for x in ok if not x["special"]]
    special = [x for x in ok if x["special"]]
    print(f"{'row':>5} {'source':<22} {'model':<14} {'config':<34} {'GPU':<14} {'pub tok/s':>10} {'pred':>9} "
          f"{'error':>8}  bound, top pieces")
    for x in plain + special:
        tag = f" [{x['special']}]" if x["special"] else ""
        g = f"{x['gpus']}x{x['gpu']}" if x["gpus"] > 1 else x["gpu"]
        print(f"{x['row']:>5} {x['source'][:22]:<22} {x['model'][:14]:<14} {_describe(x['knobs'])[:34]:<34} {g[:14]:<14} "
              f"{x['published']:>10,.0f} {x['predicted']:>9,.0f} {x['error']:>+8.1%}  {x['bound']}: {x['pieces']}{tag}")
    failed = [x for x in res if x["status"] == "failed"]
    excluded = [x for x in res if x["status"] == "excluded"]
    gpus = sorted({x["gpu"] for x in plain})
    print(f"\n{len(res)} rows: {len(plain)} plain-stack rows compared ({len(gpus)} GPU models: {', '.join(gpus)}), "
          f"{len(special)} with special kernels, {len(failed)} failed, {len(excluded)} excluded")
    print(f"plain stack (the headline): {summary([x['error'] for x in plain])}")
    if special:
        print(f"special kernels (not modelled; shown apart): {summary([x['error'] for x in special])}")
    for key in ("gpu", "source"):
        groups: dict[str, list[float]] = {}
        for x in plain:
            groups.setdefault(x[key], []).append(x["error"])
        print(f"by {key}: " + "; ".join(f"{k} {len(v)}: {statistics.median(v):+.1%}" for k, v in sorted(groups.items())))
    over = [x for x in plain if abs(x["error"]) > 0.30]
    if over:
        print("\nplain-stack rows over 30% (probable reasons):")
        for x in over:
            print(f"  {x['row']} ({x['source']}, {x['model']}, {x['gpu']}, {x['error']:+.1%}): "
                  f"{REASONS.get(str(x['row']), 'no reason found yet')}")
    for x in failed:
        print(f"  failed {x['row']}: {x['reason']}")
    if a.all:
        for x in excluded:
            print(f"  excluded {x['row']}: {x['reason']}")
    band: dict = {"source": "benchmarks/published_speed.py (plain-stack rows, measured/predicted tokens/s)",
                  "date": dt.date.today().isoformat()}
    for kind, rows in (("single_gpu", [x for x in plain if x["gpus"] == 1]),
                       ("multi_gpu", [x for x in plain if x["gpus"] > 1])):
        ratios = [x["ratio"] for x in rows]
        if not ratios:
            continue
        band[kind] = {"p10": _pct(ratios, 0.1), "p90": _pct(ratios, 0.9), "rows": len(ratios),
                      "median_abs_error": statistics.median([abs(x["error"]) for x in rows])}
        print(f"{'' if kind == 'multi_gpu' else chr(10)}band {kind} (measured/predicted, 10th-90th percentile over "
              f"{len(ratios)} rows): {band[kind]['p10']:.2f}-{band[kind]['p90']:.2f}; "
              f"median |error| {band[kind]['median_abs_error']:.1%}")
    if a.write_band and "single_gpu" in band and "multi_gpu" in band:
        atomic_write_text(BAND, json.dumps(band, indent=1) + "\n")
        print(f"wrote {BAND.relative_to(ROOT)}")
    doc = {"rows": res, "band": band, "versions": versions(), "command": "python benchmarks/published_speed.py",
           "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    atomic_write_text(Path(a.out), json.dumps(doc, indent=1, default=str))
    print(f"saved {Path(a.out).relative_to(ROOT) if Path(a.out).is_relative_to(ROOT) else a.out}")


if __name__ == "__main__":
    main()
