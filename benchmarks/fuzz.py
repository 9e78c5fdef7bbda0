#!/usr/bin/env python3
"""Fuzz the ``ftplan`` command line with hostile input and check the promises it makes.

Each generated command line runs as ``python -m ftplan ...`` in a fresh temporary working folder (HOME, TMPDIR and
FTPLAN_LOG_DIR temporary too, HF_HUB_OFFLINE=1, address space capped at 6 GiB, 2 runs at a time). Checked per run:
the exit code is 0 (fits/done), 1 (nothing fits/run failed), 2 (bad input) or 3 (internal error: one line
"internal error (...)" naming a log); no "Traceback (most recent call last)" on stdout/stderr; no hang (--timeout);
fit/report/gpus/models within 5 s, and any rejection (exit 2) within 5 s; an exit-2 run leaves no new file behind.

Inputs: every command, valid and hostile values (0, -1, 1e999, nan, inf, huge ints, 1.5 for ints, '', 5000-char,
'/', '..', '~root', odd unicode names, odd GPU lists, folders, /dev/null, /dev/full, /proc/self/status, missing
files, a file where a folder is wanted) and generated malformed files of every kind ftplan reads (--gpu-file CSV and
JSON, report --prices, model config.json, train --config best.json, --data JSONL, sqlite storage). Writes aimed at
devices go to copies of /dev/null and /dev/full made in the working folder, never to /dev. The heavy commands
(trace, profile, autotune, train) get mostly bad input, plus a few valid CPU runs (tiny model, synthetic weights)
unless --quick.

    python benchmarks/fuzz.py --quick --n 200     # quick pass, no valid heavy runs
    python benchmarks/fuzz.py --n 1200            # full pass (15-25 minutes on 2 cores)

Prints a table of counts and each distinct failure (by command, problem, exception type and innermost ftplan
frame) with one reproducing command line, re-run once to tell a flaky failure. Every record goes to --out (JSON,
written atomically). Deterministic for a --seed. Standard library only; independent of tests/.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import resource
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TB = "Traceback (most recent call last)"
LIGHT, HEAVY = ("fit", "gpus", "models", "report"), ("trace", "profile", "autotune", "train")
WEIGHTS = {"fit": 30, "report": 14, "gpus": 7, "models": 4, "trace": 10, "profile": 10, "autotune": 12, "train": 13}
VALID_SHARE = {"fit": 0.3, "report": 0.3, "gpus": 0.4, "models": 0.4}
SLOW_S, MEM_CAP, DEEP, LONG = 5.0, 6 << 30, 100_000, "x" * 5000
DEL = object()  # in a patch: remove the key

# ---------------------------------------------------------------------------------------------- hostile values
NAMES = [LONG, "a/b", "..", "../../..", "with space", "~root", "ünïcødé-模型", "\u202eevil", "🚀", "", "-", "8b\n",
         "\ufeff8b", "ｈ１００", "%s%n", "$(id)", "8b\x7f", "İ", "/", "."]
BAD = {
    "int": ["0", "-1", "1e999", "nan", "inf", "-inf", "99999999999999999999999", "2147483648", "1.5", "", "abc", "0x10"],
    "int0": ["-1", "1e999", "nan", "inf", "-inf", "99999999999999999999999", "1.5", "", "abc", "0x10"],  # where 0 is valid
    "float": ["nan", "inf", "-inf", "1e999", "-1", "", "abc", "1,5", "-1e-320", "1e308", "NaN"],
    "name": NAMES, "model": NAMES, "gpu": NAMES + ["auto", "h100:2", "2xh100"],
    "choice": ["", "FULL", "nope", LONG, "lora ", "q lora", "none", "0", "ünï", "-", "q_proj,,v_proj", ","],
    "gpulist": ["h100:", ":4", "1000xh100", "0xh100", "h100,,", ",", "", "h100:0", "h100:-1", "2xh100:4", "h100:1e9", "xh100",
                "99999999999999999999xh100", "h100:nan", "h100:1.5", "-1xh100", ",".join(["h100"] * 1000), "auto", "cpu",
                "h100:99999999999999999999", LONG, "ünï:2"],
    "tokens": ["0", "-1", "nan", "inf", "1e999", "M", "", "1e30", "5 M", "1KB", "1e-9", "99999999999999999999999B", "-5M"],
    "mem": ["0", "-1GiB", "nanGiB", "1e999GiB", "GiB", "8 XB", "", "infGiB", "1B", "99999999999999999999999GiB"],
    "dur": ["0s", "-1m", "nan", "1e999h", "", "10x", "infs", "1e30s", "s", "-0s"],
    "ranks": ["8,,16", "0", ",", "8,-1", "1e999", "8;16", "nan", "99999999999999999999999", "", "8,abc", ",".join(["8"] * 10000)],
    "outfile": ["devfull", "devnull", "/proc/self/status", "adir", "nodir/sub/x.out", LONG, "", "/proc/nope/x", ".", "afifo"],
    "outdir": ["afile", "devnull", "devfull", "/proc/self/status", LONG, "", "/proc/nope", "afile/sub"],
    "storage": ["", "notaurl", "sqlite://", "sqlite:///nodir/sub/x.db", "sqlite:///devfull", "sqlite:////proc/self/status",
                "sqlite:///adir", "mysql://u@127.0.0.1:1/x", "postgresql://u@127.0.0.1:1/db", "sqlite:///" + LONG, "redis://x"],
}
READ_BAD = ["/dev/null", "/dev/full", "/proc/self/status", "missing.file", "adir", "/", LONG, "~root/x", "a\nb", "afile"]
SPECIAL = {"adir": ("a folder", "dir"), "afile": ("a plain text file", b"not what you want\n"), "afifo": ("a FIFO", "fifo"),
           "devnull": ("char device 1,3 (a /dev/null copy)", "null"), "devfull": ("char device 1,7 (a /dev/full copy)", "full")}
ODD_JSON = [0, -3, 1.5, 1e30, 10**30, math.inf, math.nan, "8", "", True, None, [], {}]  # for any JSON field
ODD_NUM = ["nan", "inf", "-inf", "-80", "0", "1e999", "", "$2", "1e-300", "abc", "99999999999999999999999"]  # any CSV number

GENERIC_JSON = [("deep list x100000", b"[" * DEEP + b"]" * DEEP), ("deep object x100000", b'{"a":' * DEEP + b"1" + b"}" * DEEP),
                ("a list root", b"[]"), ("a number root", b"5"), ("a string root", b'"x"'), ("null", b"null"),
                ("invalid JSON", b'{"a": '), ("trailing comma", b'{"a": 1,}'), ("non-UTF-8 bytes", b"\xff\xfe\xfa\x80{}"),
                ("empty file", b""), ("UTF-8 BOM + {}", b"\xef\xbb\xbf{}"), ("NaN literal", b'{"a": NaN}'),
                ("UTF-16 JSON", '{"a": 1}'.encode("utf-16")), ("a 5000-digit number", b"1" * 5000)]
LLAMA = {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
         "num_key_value_heads": 3, "vocab_size": 49152, "max_position_embeddings": 8192}
MOE = {"num_local_experts": 8, "num_experts_per_tok": 2}
CFG_KEYS = ["vocab_size", "num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
            "max_position_embeddings", "intermediate_size", "model_type", "text_config", "tie_word_embeddings"]
CFG_SPECIAL = [
    ("vocab_size=1e30", {"vocab_size": 1e30}), ("num_hidden_layers=0", {"num_hidden_layers": 0}),
    ("num_hidden_layers=10**7", {"num_hidden_layers": 10**7}), ("zero experts, top-k 2", {"num_local_experts": 0, "num_experts_per_tok": 2}),
    ("top-k 9 above 4 experts", {"num_local_experts": 4, "num_experts_per_tok": 9}), ("experts without top-k", {"num_experts": 8}),
    ("num_experts='8'", {"num_experts": "8", "num_experts_per_tok": 2}), ("top-k 0", {**MOE, "num_experts_per_tok": 0}),
    ("10**9 experts", {"num_local_experts": 10**9, "num_experts_per_tok": 10**9}), ("moe_intermediate_size=-5", {**MOE, "moe_intermediate_size": -5}),
    ("shared_expert_intermediate_size='x'", {**MOE, "shared_expert_intermediate_size": "x"}), ("unknown model_type", {"model_type": "new-arch"}),
    ("hidden_size=2**62", {"hidden_size": 2**62, "head_dim": 64}), ("no hidden_size", {"hidden_size": DEL}), ("head_dim=10**9", {"head_dim": 10**9}),
    ("num_key_value_heads=7 (no divisor)", {"num_key_value_heads": 7}), ("intermediate_size=10**20", {"intermediate_size": 10**20}),
    ("qwen intermediate_size=1", {"model_type": "qwen", "intermediate_size": 1}), ("text_config={}", {"text_config": {}}),
    ("falcon new arch num_kv_heads=0", {"model_type": "falcon", "new_decoder_architecture": True, "num_kv_heads": 0}),
    ("falcon multi_query='no'", {"model_type": "falcon", "multi_query": "no"}),
    ("all sizes 1", dict.fromkeys(["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "vocab_size"], 1))]
BEST = {"format": "ftplan-best/1", "model": "smollm2-135m", "synthetic_weights": True, "device": "cpu",
        "knobs": {"method": "lora", "seq_len": 32, "micro_batch": 1, "grad_accum": 1}}
BEST_KEYS = ["model", "knobs", "synthetic_weights", "device", "format", "data"] + ["knobs." + k for k in (
    "method quant double_quant lora_rank lora_alpha lora_targets lora_dropout micro_batch seq_len grad_accum gradient_checkpointing "
    "optimizer attention num_gpus sharding prepare_kbit autocast loss_impl compute_dtype effective_batch foo").split()]
BEST_STRINGS = ["false", "foo", "all-linear", "no/such/dir", LONG, "../../..", "~root", "cuda", "tpu", "other/9"]
LINES = [{"text": "hello world, this is a test"}, {"prompt": "2+2=", "completion": " 4"}, {"instruction": "Say hi", "input": "", "output": "hi"},
         {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
BAD_LINES = [("deep list line x100000", b"[" * DEEP + b"]" * DEEP), ("deep text value", b'{"text": ' + b"[" * DEEP + b"]" * DEEP + b"}"),
             ("line 1", b"1"), ("line []", b"[]"), ('line "x"', b'"x"'), ("line null", b"null"), ("line true", b"true"),
             ("unknown fields", b'{"foo": 1}'), ("empty object", b"{}"), ("text=5", b'{"text": 5}'), ("text=null", b'{"text": null}'),
             ("messages='hi'", b'{"messages": "hi"}'), ("messages=[]", b'{"messages": []}'), ("messages=[null]", b'{"messages": [null]}'),
             ("role bot", b'{"messages": [{"role": "bot", "content": "x"}]}'), ("no assistant", b'{"messages": [{"role": "user", "content": "x"}]}'),
             ("content is a list", b'{"messages": [{"role": "assistant", "content": ["x"]}]}'), ("prompt only", b'{"prompt": "a"}'),
             ("output=null", b'{"instruction": "a", "output": null}'), ("invalid JSON", b"{"), ("text=NaN", b'{"text": NaN}'),
             ("5000-digit number", b"1" * 5000), ("non-UTF-8 line", b"\xff\xfe\x80"), ("garbage after the object", b'{"text": "a"} x')]
GPU_HDR = "key,name,aliases,memory_gb,bandwidth_gbs,bf16_tflops,price_per_hour\n"
GPU_VALID = GPU_HDR + "mygpu,My GPU,,80,2000,500,2.5\n"
GPU_CSV = [("only header", GPU_HDR), ("duplicate key", GPU_HDR + "mygpu,A,,80,1,1,1\nmygpu,B,,40,1,1,1\n"),
           ("blank key", GPU_HDR + " ,A,,80,1,1,1\n"), ("alias h100 on a new GPU", GPU_HDR + "mygpu,My GPU,h100;4090,80,2000,500,2.5\n"),
           ("5000-char key", GPU_HDR + LONG + ",A,,80,1,1,1\n"), ("too many fields", GPU_HDR + "mygpu,A,,80,1,1,1,9,9,9\n"),
           ("missing key column", "name,memory_gb\nX,80\n"), ("unknown column", "key,foo\nmygpu,1\n"), ("empty file", ""),
           ("unbalanced quote", GPU_HDR + 'mygpu,"My GPU,,80,1,1,1\n'), ("NUL bytes", GPU_HDR + "mygpu,A\x00B,,80,1,1,1\n"),
           ("200k-char field", GPU_HDR + "mygpu," + "n" * 200_000 + ",,80,1,1,1\n"), ("non-UTF-8", b"key,name\n\xff\xfe,\x80\n")]
GPU_JSON = [("gpus='x'", {"gpus": "x"}), ("gpus=[1]", {"gpus": [1]}), ("gpus={}", {"gpus": {"a": 1}}), ("key=5", [{"key": 5}]),
            ("key={}", [{"key": {"a": 1}}])]
P_HDR = "gpu,price_per_hour,spot_price_per_hour,purchase_price,source,date\n"
P_VALID = P_HDR + "h100,2.5,1.0,25000,me,2026-01-01\nrtx4090,0.7,,,,\n"
PRICES = [("unknown gpu", P_HDR + "nosuchgpu,1\n"), ("only header", P_HDR), ("blank gpu", P_HDR + " ,1\n"), ("duplicate rows", P_HDR + "h100,1\nh100,2\n"),
          ("extra fields", P_HDR + "h100,1,2,3,4,5,6,7\n"), ("5000-char gpu", P_HDR + LONG + ",1\n"), ("NUL", P_HDR + "h100,1\x00\n"),
          ("spot above on-demand", P_HDR + "h100,1,50\n"), ("missing price column", "gpu\nh100\n"), ("empty file", ""),
          ("non-UTF-8", b"gpu,price_per_hour\n\xff\xfe,1\n"), ("headers only spaces", "  ,  \n1,2\n")]


def jdump(o) -> bytes:
    return json.dumps(o).encode()


def patched(base: dict, patch: dict) -> dict:
    doc = json.loads(json.dumps(base))
    for k, v in patch.items():
        tgt, key = (doc.get("knobs"), k[6:]) if k.startswith("knobs.") else (doc, k)
        if isinstance(tgt, dict):
            tgt.pop(key, None) if v is DEL else tgt.__setitem__(key, v)
    return doc


def field_patch(rng: random.Random, keys: list[str], extra: list, base: dict) -> tuple[str, dict]:
    k, v = rng.choice(keys), rng.choice(ODD_JSON + extra + [DEL])
    if v is DEL and k.removeprefix("knobs.") not in {**base, **base.get("knobs", {})}:
        v = rng.choice(ODD_JSON + extra)  # removing what is not there would leave a valid document
    return (f"no {k}" if v is DEL else f"{k}={v!r:.30}"), {k: v}


def file_blob(rng: random.Random, kind: str, good: bool) -> tuple[str, bytes, str]:
    """(label, bytes, suffix) of a generated input file of ``kind``: valid when ``good``, else malformed."""
    if kind in ("model", "best"):
        base = LLAMA if kind == "model" else BEST
        if good:
            return f"valid {'config' if kind == 'model' else 'best'}.json", jdump(base), ".json"
        if rng.random() < 0.25:
            return (*rng.choice(GENERIC_JSON), ".json")
        if kind == "model":
            lab, p = rng.choice(CFG_SPECIAL) if rng.random() < 0.5 else field_patch(rng, CFG_KEYS, [], LLAMA)
        else:
            lab, p = field_patch(rng, BEST_KEYS, BEST_STRINGS, BEST)
        return f"{'config' if kind == 'model' else 'best'}.json {lab}", jdump(patched(base, p)), ".json"
    if kind == "jsonl":
        lines = [jdump(rng.choice(LINES)) for _ in range(8)]
        if good:
            return "valid JSONL (8 lines)", b"\n".join(lines) + b"\n", ".jsonl"
        if rng.random() < 0.2:
            return (*rng.choice([("empty file", b""), ("blank lines only", b"\n \n\t\n"), ("BOM + valid", b"\xef\xbb\xbf" + b"\n".join(lines)),
                                 ("UTF-16 JSONL", b"\n".join(lines).decode().encode("utf-16")), ("non-UTF-8 file", b"\x80\xff" * 50)]), ".jsonl")
        lab, bad = rng.choice(BAD_LINES)
        at = rng.randrange(len(lines) + 1)
        return f"JSONL line {at + 1}: {lab}", b"\n".join(lines[:at] + [bad] + lines[at:]) + b"\n", ".jsonl"
    if kind == "gpufile":
        if rng.random() < 0.3:  # JSON
            if good:
                return "valid GPU JSON", jdump([{"key": "mygpu", "memory_gb": "80", "bandwidth_gbs": "2000"}]), ".json"
            r = rng.random()
            if r < 0.3:
                return (*rng.choice(GENERIC_JSON), ".json")
            lab, doc = rng.choice(GPU_JSON) if r < 0.5 else (f"memory_gb={(v := rng.choice(ODD_JSON))!r:.30}", [{"key": "mygpu", "memory_gb": v}])
            return "GPU JSON " + lab, jdump(doc), ".json"
        if good:
            return "valid GPU CSV", GPU_VALID.encode(), ".csv"
        if rng.random() < 0.4:
            lab, data = rng.choice(GPU_CSV)
            return "GPU CSV " + lab, data if isinstance(data, bytes) else data.encode(), ".csv"
        col, v, gpu = rng.randrange(3, 7), rng.choice(ODD_NUM), rng.choice(["mygpu", "h100-sxm"])
        row = [gpu, "", "", "80" if gpu == "mygpu" else "", "", "", ""]
        row[col] = v
        return f"GPU CSV {gpu} {GPU_HDR.split(',')[col].strip()}={v!r}", (GPU_HDR + ",".join(row) + "\n").encode(), ".csv"
    if kind == "prices":
        if good:
            return "valid prices", P_VALID.encode(), ".csv"
        if rng.random() < 0.4:
            lab, data = rng.choice(PRICES)
            return "prices " + lab, data if isinstance(data, bytes) else data.encode(), ".csv"
        col, v = rng.randrange(1, 4), rng.choice(ODD_NUM)
        row = ["h100", "2", "", ""]
        row[col] = v
        return f"prices {P_HDR.split(',')[col]}={v!r}", (P_HDR + ",".join(row) + "\n").encode(), ".csv"
    if kind == "sqlite":
        return (*rng.choice([("random bytes", rng.randbytes(4096)), ("empty file", b""), ("text file", b"hello"),
                             ("SQLite header + garbage", b"SQLite format 3\x00" + rng.randbytes(2000))]), ".db")
    raise ValueError(kind)


def special(v: str, files: dict) -> None:
    name = v.removeprefix("sqlite:///").split("/")[0]
    if name in SPECIAL:
        files[name] = SPECIAL[name]


def value(rng: random.Random, flag: str, kind: str, valid: list | None, good: bool, files: dict) -> str:
    """A value for ``flag``: one of ``valid`` (or a good generated file) when ``good``, else a hostile one."""
    as_file = kind == "model" and (len(valid or []) > 1 or not good) and rng.random() < (0.2 if good else 0.45)
    if kind in ("best", "jsonl", "gpufile", "prices") or as_file:
        if not good and rng.random() < 0.25:
            v = rng.choice(READ_BAD)
        else:
            lab, data, suf = file_blob(rng, kind, good)
            if kind != "model":
                files[flag.strip("-") + suf] = (lab, data)
                return flag.strip("-") + suf
            form = rng.choice(["file", "./file", "folder"] + ([] if good else ["config.json is a folder"]))
            if form == "config.json is a folder":
                files["mdl2/config.json"] = ("a folder named config.json", "dir")
                return "mdl2"
            files["mdl/config.json" if form == "folder" else "cfg.json"] = (lab, data)
            return {"file": "cfg.json", "./file": "./cfg.json", "folder": "mdl"}[form]
    elif kind == "storage" and (good or rng.random() < 0.5):
        if not good:
            files["s.db"] = ("a folder", "dir") if rng.random() < 0.15 else file_blob(rng, "sqlite", False)[:2]
        return "sqlite:///s.db"
    else:
        v = rng.choice(valid) if good else rng.choice(BAD[kind])
    special(v, files)
    return v


MODELS = ["8b", "70b", "smollm2-135m", "1b", "olmoe", "qwen3-4b", "mistral-7b", "gemma2-2b", "phi-2", "falcon-7b"]
GPUS = ["h100", "rtx4090", "4090", "a100-40gb", "t4", "l40s", "a10g", "rtx3060"]
KNOBS = {"--method": ("choice", ["full", "lora", "qlora"]), "--quant": ("choice", ["nf4", "fp4", "int8", "bf16", "fp16", "fp32"]),
         "--rank": ("int", ["4", "16", "64"]), "--alpha": ("int", ["8", "32"]), "--lora-dropout": ("float", ["0", "0.1"]),
         "--targets": ("choice", ["all-linear", "attention", "mlp", "q_proj,v_proj"]), "--micro-batch": ("int", ["1", "2", "4"]),
         "--seq-len": ("int", ["512", "2048"]), "--grad-accum": ("int", ["1", "4"]),
         "--optimizer": ("choice", ["adamw", "adamw_8bit", "paged_adamw_8bit", "sgd", "adafactor"]),
         "--attention": ("choice", ["sdpa", "eager", "flash_attention_2"]), "--loss": ("choice", ["standard", "chunked"])}
TINY = {"--model": ("model", ["smollm2-135m"]), "--seq-len": ("int", ["32"]), "--method": ("choice", ["lora"]), "--device": ("choice", ["cpu"])}
REST = {k: v for k, v in KNOBS.items() if k not in TINY}
# command: (always given, optional, flags, fixed arguments); heavy commands: "always given" is a valid tiny CPU run
SPECS = {
    "fit": ({"--model": ("model", MODELS), "--gpu": ("gpu", GPUS)},
            {**KNOBS, "--effective-batch": ("int", ["16", "32"]), "--for": ("choice", ["ftplan", "hf", "trl", "axolotl", "llamafactory"]),
             "--gpus": ("int", ["1", "2", "8"]), "--tokens": ("tokens", ["10M", "1.2B"]),
             "--sharding": ("choice", ["ddp", "fsdp", "fsdp_grad_op", "zero1", "zero2", "zero3"]),
             "--offload": ("choice", ["none", "params", "optimizer"]), "--nodes": ("int", ["1", "2"]),
             "--host-ram": ("mem", ["256GiB", "16GiB"]),
             "--epochs": ("float", ["1", "3"]), "--price": ("float", ["1.5", "0"]), "--spot-discount": ("float", ["0", "0.6"]),
             "--objective": ("choice", ["throughput", "cost", "quality"]), "--margin": ("float", ["0.05", "0.2"]),
             "--top": ("int", ["1", "6"]), "--gpu-file": ("gpufile", None)},
            ["--json", "--no-calibration", "--double-quant", "--no-double-quant", "--grad-ckpt", "--no-grad-ckpt"], []),
    "gpus": ({}, {"--gpu-file": ("gpufile", None)}, ["--json"], ["gpus"]),
    "models": ({}, {}, ["--json"], ["models"]),
    "report": ({"--model": ("model", MODELS), "--gpus": ("gpulist", ["rtx4090,l40s,2xh100,a100-80gb:4", "h100", "t4,l4", "2xh100,4xa100-40gb"]),
                "--tokens": ("tokens", ["50M", "1.2B"]), "--output": ("outfile", ["r.html"])},
               {"--epochs": ("float", ["1", "2"]), "--prices": ("prices", None), "--spot-discount": ("float", ["0.6", "0"]),
                "--utilization-hours-per-week": ("float", ["40", "168"]), "--study": ("name", ["s1"]), "--storage": ("storage", None),
                "--seq-len": ("int", ["2048"]), "--effective-batch": ("int", ["16"]), "--method": ("choice", ["lora", "qlora", "full"]),
                "--csv": ("outfile", ["t.csv"]), "--json": ("outfile", ["t.json"]), "--pdf": ("outfile", ["r.pdf"])}, [], ["report"]),
    "trace": ({k: v for k, v in TINY.items() if k != "--device"}, {**REST, "--gpu": ("gpu", ["cpu"]),
                                                                    "--gpus": ("int", ["1", "2"]),
                                                                    "--sharding": ("choice", ["fsdp", "fsdp_grad_op"])},
              ["--json"], ["trace"]),
    "profile": ({**TINY, "--steps": ("int", ["2"])}, {**REST, "--max-memory": ("mem", ["8GiB"])},
                ["--json", "--no-breakdown", "--no-compare"], ["profile", "--synthetic-weights"]),
    "autotune": ({**TINY, "--gpu": ("gpu", ["cpu"]), "--effective-batch": ("int", ["1"]), "--trials": ("int", ["1"]),
                  "--steps": ("int", ["2"]), "--runs-dir": ("outdir", ["runs"])},
                 {**{k: REST[k] for k in ("--quant", "--targets", "--optimizer", "--loss", "--micro-batch", "--attention")},
                  "--data": ("jsonl", None), "--time-budget": ("dur", ["10m"]), "--objective": ("choice", ["throughput", "cost"]),
                  "--study": ("name", ["s1"]), "--storage": ("storage", None), "--trial-timeout": ("float", ["120"]),
                  "--max-memory": ("mem", ["8GiB"]), "--margin": ("float", ["0.05"]), "--rank": ("ranks", ["8"]),
                  "--for": ("choice", ["ftplan"]), "--price": ("float", ["1"]), "--seed": ("int0", ["0"]),
                  "--output": ("outdir", ["tout"]), "--train-steps": ("int", ["1"])},
                 ["--json", "--then-train", "--no-grad-ckpt"], ["autotune", "--synthetic-weights"]),
    "train": ({"--config": ("best", None), "--data": ("jsonl", None), "--max-steps": ("int", ["1"]), "--device": TINY["--device"],
               "--output": ("outdir", ["out"])},
              {"--eval-data": ("jsonl", None), "--model": ("model", ["smollm2-135m"]), "--epochs": ("float", ["1"]),
               "--lr": ("float", ["0.0002"]), "--warmup-steps": ("int0", ["0"]), "--save-every": ("int", ["1"]), "--keep": ("int", ["1"]),
               "--seed": ("int0", ["0"]), "--gpus": ("int", ["1"])},
              ["--synthetic-weights", "--packing", "--resume", "--merge", "--real-weights"], ["train", "-q"]),
}
REQUIRED = {"fit": ["--model"], "report": ["--model", "--gpus", "--tokens"], "trace": ["--model"], "profile": ["--model"],
            "autotune": ["--model"], "train": ["--config", "--data"]}  # leaving one out is bad input (others have defaults)
JUNK = [["--nope"], ["extra"], ["--json", "--json"], ["--"], ["--gpu-file"], ["-m"], ["--help", "--nope"], ["-x" * 3000]]


def gen_case(rng: random.Random, i: int, cmd: str, heavy_valid: bool) -> dict:
    req, opt, flags, fixed = SPECS[cmd]
    files: dict = {}
    good = heavy_valid if cmd in HEAVY else rng.random() < VALID_SHARE[cmd]
    chosen = {**req, **{f: opt[f] for f in rng.sample(sorted(opt), min(len(opt), rng.randint(0, 4)))}} if cmd in LIGHT else dict(req)
    vals = {f: value(rng, f, kind, valid, True, files) for f, (kind, valid) in chosen.items()}
    extra = rng.sample(flags, rng.randint(0, min(2, len(flags)))) if cmd in LIGHT or not good else []
    if cmd == "fit" and "--gpu-file" in vals and rng.random() < 0.5:
        vals["--gpu"] = "mygpu"  # the GPU the valid GPU files add
    muts, junk = [], []
    if not good:
        pool = {**req, **opt}
        for f in rng.sample(sorted(pool), min(len(pool), rng.choice([1, 1, 1, 2, 3]))):
            vals[f] = value(rng, f, *pool[f], False, files)
            muts.append(f)
        if not pool or rng.random() < 0.12:
            if REQUIRED.get(cmd) and rng.random() < 0.3:
                muts.append("missing " + (f := rng.choice(REQUIRED[cmd])))
                vals.pop(f, None)
            else:
                junk = rng.choice(JUNK)
                muts.append("junk " + " ".join(junk)[:20])
        if cmd == "fit" and rng.random() < 0.05:
            extra.append("--trace")  # heavy when the input is accepted: only with bad input
    argv = list(fixed)
    for f, v in vals.items():
        argv += [f"{f}={v}"] if rng.random() < 0.2 else [f, v]
    return {"id": i, "cmd": cmd, "argv": argv + extra + junk, "files": files, "mutated": muts, "heavy_valid": heavy_valid}


def gen_cases(n: int, seed: int, heavy_valid: int) -> list[dict]:
    rng = random.Random(seed)
    cmds = list(WEIGHTS)
    order = cmds + rng.choices(cmds, weights=list(WEIGHTS.values()), k=max(0, n - len(cmds)))  # every command at least once
    per_cmd, used, cases = -(-heavy_valid // len(HEAVY)), Counter(), []
    for i, cmd in enumerate(order):
        hv = cmd in HEAVY and used[cmd] < per_cmd and sum(used.values()) < heavy_valid and rng.random() < 0.15
        used[cmd] += hv
        cases.append(gen_case(rng, i, cmd, hv))
    return cases


# ------------------------------------------------------------------------------------------------------ running
def materialize(wd: Path, files: dict) -> None:
    for rel, (_, data) in files.items():
        p = wd / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if data == "dir":
            p.mkdir(exist_ok=True)
            (p / "keep.txt").write_text("keep\n")
        elif data in ("null", "full"):
            os.mknod(p, stat.S_IFCHR | 0o666, os.makedev(1, 3 if data == "null" else 7))
        elif data == "fifo":
            os.mkfifo(p)
        else:
            p.write_bytes(data)


def listing(wd: Path) -> set[str]:
    return {str(p.relative_to(wd)) for p in wd.rglob("*")}


EXC = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Warning|Exit|Interrupt|Iteration)(?::|$)")


def exc_info(text: str) -> tuple[str, str]:
    """(exception line, innermost ftplan frame else innermost frame) of a traceback."""
    lines = text.rstrip().splitlines()
    frames = [ln.strip() for ln in lines if ln.lstrip().startswith('File "')]
    own = [f for f in frames if "/ftplan/" in f] or frames
    last = next((ln for ln in reversed(lines) if EXC.match(ln)), lines[-1] if lines else "")
    return last[:300], re.sub(r'File "[^"]*/(ftplan/[^"]*|[^"/]*)"', r"\1", own[-1]) if own else ""


def run_case(case: dict, base: Path, timeout: float) -> dict:
    d = Path(tempfile.mkdtemp(prefix=f"c{case['id']}-", dir=base))
    wd, home, logs, tmp = (d / x for x in ("work", "home", "logs", "tmp"))
    for p in (wd, home, logs, tmp):
        p.mkdir()
    materialize(wd, case["files"])
    before = listing(wd)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FTPLAN_", "HF_", "XDG_"))}
    env.update(HF_HUB_OFFLINE="1", FTPLAN_LOG_DIR=str(logs), HOME=str(home), TMPDIR=str(tmp),
               PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    t0, hung = time.perf_counter(), False
    p = subprocess.Popen([sys.executable, "-m", "ftplan", *case["argv"]], cwd=wd, env=env, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = p.communicate(timeout=max(timeout, 300) if case["heavy_valid"] else timeout)
    except subprocess.TimeoutExpired:
        hung = True
    try:
        os.killpg(p.pid, signal.SIGKILL)  # the run's own process group (its workers too), never anything else
    except ProcessLookupError:
        pass
    if hung:
        out, err = p.communicate()
    secs = time.perf_counter() - t0
    out, err = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
    new = sorted(listing(wd) - before)
    log = next((f.read_text(errors="replace") for f in [*sorted(logs.iterdir()), *sorted(tmp.glob("ftplan-*.log"))] if f.is_file()), "")
    shutil.rmtree(d, ignore_errors=True)
    rc, tb = None if hung else p.returncode, TB in out or TB in err
    exc, frame = exc_info(log or (err if TB in err else out)) if tb or rc == 3 else ("", "")
    rec = {k: case[k] for k in ("id", "cmd", "argv", "mutated", "heavy_valid")}
    rec.update(files={k: v[0] for k, v in case["files"].items()}, rc=rc, seconds=round(secs, 3), timeout=hung, traceback=tb,
               new_files=new[:20], exc=exc, frame=frame, stderr_tail=err.strip().splitlines()[-3:], stdout_bytes=len(out))
    rec["problems"] = problems(rec, err)
    return rec


def problems(r: dict, err: str) -> list[str]:
    out, rc = [], r["rc"]
    if r["timeout"]:
        out.append("hang (timeout)")
    elif r["cmd"] in LIGHT and r["seconds"] > SLOW_S and not ("--trace" in r["argv"] and rc == 0):
        out.append("slow (> 5 s)")
    elif rc == 2 and r["seconds"] > SLOW_S:
        out.append("slow rejection (exit 2 after > 5 s)")
    if r["traceback"]:
        out.append("traceback printed")
    if rc == 3:
        out.append("internal error (exit 3)")
        if len(err.strip().splitlines()) != 1 or not err.startswith("internal error ("):
            out.append("exit 3 without the one-line message")
    if rc is not None and rc not in (0, 1, 2, 3):
        out.append(f"exit code {rc}")
    if rc == 2 and r["new_files"]:
        out.append("exit 2 left files")
    if rc == 2 and "error" not in err.lower():
        out.append("exit 2 without an error message")
    return out


def key(r: dict, prob: str) -> tuple:
    """What makes two failures the same one."""
    if prob in ("traceback printed", "internal error (exit 3)", "exit 3 without the one-line message"):
        return (r["cmd"], prob, r["exc"].split(":")[0], r["frame"])
    if prob == "exit 2 left files":
        return (r["cmd"], prob, tuple(sorted({re.sub(r"\d+", "N", f.split("/")[0]) for f in r["new_files"]})))
    if prob.startswith("slow rejection") and r["stderr_tail"]:  # by the check that comes too late
        return (r["cmd"], prob, re.sub(r"'[^']*'|\"[^\"]*\"|[\w./-]*\d[\w./-]*", "_", r["stderr_tail"][-1])[:70])
    return (r["cmd"], prob, tuple(sorted(r["mutated"])))


def short(text: str) -> str:
    return re.sub(r"(.)\1{19,}", lambda m: f"{m.group(1) * 3}...<{len(m.group(0))} x {m.group(1)!r}>", text)[:300]


def show(argv: list[str]) -> str:
    """A shell command line for ``argv`` (long repetitive values as printf, odd characters as $'...')."""
    def q(a: str) -> str:
        for k in range(1, 9):
            if len(a) > 100 and a == a[:k] * (len(a) // k) and not set("%\\'") & set(a[:k]):
                return f"\"$(printf '%.0s{a[:k]}' $(seq {len(a) // k}))\""
        if len(a) > 100:
            return shlex.quote(a[:60]) + f"...<{len(a)} chars>"
        if any(c in a for c in "\n\t\x7f") or not a.isascii():
            return "$'" + a.encode("unicode_escape").decode().replace("'", "\\'") + "'"
        return shlex.quote(a)
    return "python -m ftplan " + " ".join(q(a) for a in argv)


def summarize(recs: list[dict]) -> dict:
    cols = ["runs", "rc0", "rc1", "rc2", "rc3", "other", "traceback", "hang", "slow", "exit2-files", "exit3"]
    table = {}
    for cmd in [*WEIGHTS, "total"]:
        rs = [r for r in recs if cmd in ("total", r["cmd"])]
        c = Counter(r["rc"] for r in rs)
        row = [len(rs), c[0], c[1], c[2], c[3], len(rs) - c[0] - c[1] - c[2] - c[3], sum(r["traceback"] for r in rs),
               sum(r["timeout"] for r in rs), sum(any(p.startswith("slow") for p in r["problems"]) for r in rs),
               sum("exit 2 left files" in r["problems"] for r in rs), c[3]]
        table[cmd] = dict(zip(cols, row, strict=True))
    return table


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1200, help="command lines to run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=20, help="seconds before a run counts as hung (valid heavy runs: 300)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fuzz.json"))
    ap.add_argument("--quick", action="store_true", help="no valid heavy runs (no torch)")
    ap.add_argument("--heavy-valid", type=int, default=8, help="valid trace/profile/autotune/train runs (at most 20)")
    ap.add_argument("--jobs", type=int, default=2, choices=(1, 2))
    ap.add_argument("--no-recheck", action="store_true", help="do not re-run each distinct failure once")
    a = ap.parse_args()
    resource.setrlimit(resource.RLIMIT_AS, (MEM_CAP, MEM_CAP))  # inherited: a runaway read is a MemoryError, not the OOM killer
    cases = gen_cases(a.n, a.seed, 0 if a.quick else min(a.heavy_valid, 20))
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    base, t0, recs, groups = Path(tempfile.mkdtemp(prefix="ftplan-fuzz-")), time.time(), [], {}
    with ThreadPoolExecutor(a.jobs) as pool:
        for r in pool.map(lambda c: run_case(c, base, a.timeout), cases):
            recs.append(r)
            if len(recs) % 100 == 0:
                print(f"  {len(recs)}/{len(cases)} runs, {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
        for r in recs:
            for prob in r["problems"]:
                g = groups.setdefault(key(r, prob), {"problem": prob, "cmd": r["cmd"], "runs": 0, "example": r})
                g["runs"] += 1
        if not a.no_recheck:  # each distinct failure once more: a flaky one does not reproduce
            again = pool.map(lambda g: run_case(cases[g["example"]["id"]], base, a.timeout), list(groups.values()))
            for g, r in zip(list(groups.values()), again, strict=True):
                g["reproduces"] = g["problem"] in r["problems"] or (g["problem"].startswith("slow") and r["seconds"] > SLOW_S)
    shutil.rmtree(base, ignore_errors=True)
    for dev in ("/dev/null", "/dev/full"):
        if not stat.S_ISCHR(os.stat(dev).st_mode):
            print(f"WARNING: {dev} is no longer a character device", file=sys.stderr)
    table = summarize(recs)
    print(f"\nftplan fuzz at {commit or '?'}: {len(recs)} runs, seed {a.seed}, {time.time() - t0:.0f} s ({sum(r['heavy_valid'] for r in recs)} valid heavy)\n")
    print(f"{'command':<10}" + "".join(f"{h:>12}" for h in table["total"]))
    for cmd, row in table.items():
        print(f"{cmd:<10}" + "".join(f"{v:>12}" for v in row.values()))
    fails = sorted(groups.values(), key=lambda g: (g["problem"], g["cmd"]))
    print(f"\n{len(fails)} distinct failures\n")
    for n, g in enumerate(fails, 1):
        r = g["example"]
        what = f"{short(r['exc'])} @ {r['frame']}" if r["exc"] else "mutated: " + (", ".join(r["mutated"]) or "nothing (valid input)")
        rep = "" if "reproduces" not in g else f"; re-run: {'reproduces' if g['reproduces'] else 'did NOT reproduce'}"
        print(f"[{n}] {g['problem']} | {g['cmd']} | {what} ({g['runs']} runs{rep})")
        if r["files"]:
            print("    files: " + "; ".join(f"{k} = {v}" for k, v in r["files"].items()))
        if r["new_files"]:
            print("    left: " + ", ".join(r["new_files"][:6]))
        print(f"    $ {show(r['argv'])}\n    exit {r['rc']} after {r['seconds']:.2f} s; stderr:")
        for ln in r["stderr_tail"]:
            print(f"      | {short(ln)}")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"args": vars(a), "commit": commit, "table": table, "records": recs,
           "failures": [{**{k: v for k, v in g.items() if k != "example"}, "example_id": g["example"]["id"],
                         "repro": show(g["example"]["argv"])} for g in fails]}
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
    os.replace(tmp, out)
    print(f"\nrecords: {out}")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
