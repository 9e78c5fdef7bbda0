"""Hostile and careless input: one line, the right exit code, quickly (issue 12). Exit codes: 0 fits/done,
1 nothing fits/run failed, 2 bad input, 3 internal error (one line, the traceback in a log file)."""

import json
import os
import subprocess
import sys
import time

import pytest

from ftplan.errors import FtplanError
from ftplan.planner.options import UPPER, positive_int
from ftplan.units import real


def _ftplan(*args, env=None):
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "ftplan", *args], capture_output=True, text=True, timeout=60,
                       env={**os.environ, **(env or {})})
    return r, time.perf_counter() - t0


@pytest.mark.parametrize("args,needle", [
    (("--effective-batch", "99999999999999999999999"), "effective_batch=99999999999999999999999 is beyond"),
    (("--effective-batch", "2147483648"), "effective_batch=2147483648 is beyond"),
    (("--price", "nan"), "price=nan must be a finite number"),
    (("--price", "inf"), "price=inf must be a finite number"),
    (("--epochs", "nan"), "epochs=nan must be a finite number"),
    (("--epochs", "1e300"), "epochs=1e+300 must be > 0 and <= 1e+06"),
    (("--spot-discount", "nan"), "spot_discount=nan"),
    (("--lora-dropout", "inf"), "lora_dropout=inf"),
    # several GPUs (issue 13)
    (("--host-ram", "nan"), "host_ram='nan' is not valid"),
    (("--host-ram", "-5GiB"), "host_ram='-5GiB' is not valid"),
    (("--nodes", "0"), "nodes=0 must be greater than 0"),
    (("--gpus", "4", "--nodes", "3"), "--nodes=3 does not divide --gpus=4"),
    (("--offload", "sideways"), "unknown offload 'sideways'; valid: none, optimizer, params"),
    (("--gpus", "2", "--sharding", "ddp", "--offload", "params"), "--offload=params is not possible with --sharding ddp"),
    (("--gpus", "2", "--offload", "optimizer"), "--offload optimizer is DeepSpeed ZeRO's"),
    (("--gpus", "2", "--sharding", "zero3"), "ftplan train runs DDP and FSDP, not DeepSpeed"),
    (("--gpus", "2", "--sharding", "fsdp", "--optimizer", "paged_adamw_8bit"), "bitsandbytes optimizers do not run"),
    (("--gpus", "2", "--sharding", "fsdp", "--loss", "chunked"), "ftplan train runs the chunked loss on one process"),
    # an older transformers' loss describes a run for estimate(); a plan is built with the installed one
    (("--loss", "legacy_shift"), "loss_impl='legacy_shift' describes an older transformers' loss for estimate() only"),
    (("--loss", "upcast", "--for", "hf"), "loss_impl='upcast' describes an older transformers' loss"),
])
def test_numbers_out_of_range_are_refused_at_once(args, needle):
    # was: a hang (_divisors counted to the effective batch), and NaN/inf prices answered with exit 0
    r, seconds = _ftplan("-m", "8b", "-g", "rtx4090", *args)
    assert r.returncode == 2 and needle in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert seconds < 5


def test_no_nan_or_infinity_reaches_the_json():
    r, _ = _ftplan("-m", "8b", "-g", "rtx4090", "--json", "--price", "1e6", "--epochs", "1e6", "--tokens", "1e16")
    assert r.returncode == 0
    json.loads(r.stdout, parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))


@pytest.mark.parametrize("args,needle", [
    (("--lr", "nan"), "--lr=nan must be a finite number"),
    (("--lr", "-1"), "--lr=-1 must be > 0"),
    (("--lr", "3"), "--lr=3 must be > 0 and <= 1"),
    (("--warmup-steps", "-3"), "--warmup-steps=-3"),
    (("--keep", "-1"), "--keep=-1"),
    (("--keep", "0"), "--keep=0"),
    (("--epochs", "inf"), "--epochs=inf"),
    (("--max-steps", "0"), "--max-steps=0"),
])
def test_train_options_are_checked_before_torch(tmp_path, args, needle):
    cfg = tmp_path / "best.json"
    cfg.write_text(json.dumps({"format": "ftplan-best/1", "model": "1b", "knobs": {}}))
    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "hello"}\n')
    r, seconds = _ftplan("train", "-c", str(cfg), "--data", str(data), *args)
    assert r.returncode == 2 and needle in r.stderr, r.stderr
    assert seconds < 5  # torch would take longer than this to import on these machines
    assert not (tmp_path / "train").exists()  # nothing written


def test_an_internal_error_is_one_line_exit_3_and_a_log(tmp_path):
    code = ("import sys, ftplan.fit as F\n"
            "def boom(*a, **k): raise ZeroDivisionError('boom')\n"
            "F.run_fit = boom\n"
            "sys.argv = ['ftplan', '-m', '8b', '-g', 'rtx4090']\n"
            "from ftplan.cli import main\nmain()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "FTPLAN_LOG_DIR": str(tmp_path)})
    assert r.returncode == 3
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("internal error (ZeroDivisionError: boom); the traceback is in ")
    (log,) = tmp_path.iterdir()
    assert str(log) in line and "Traceback" in log.read_text() and "ZeroDivisionError" in log.read_text()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), True, "1e999", [4], "3.5", 0, -2])
def test_whole_numbers_refuse_what_is_not_one(value):
    with pytest.raises(FtplanError, match="micro_batch="):
        positive_int("micro_batch", value)


def test_whole_numbers_have_a_ceiling():
    assert positive_int("seq_len", UPPER["seq_len"]) == UPPER["seq_len"]
    with pytest.raises(FtplanError, match="beyond the largest accepted"):
        positive_int("seq_len", UPPER["seq_len"] + 1)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "nan", "x", None, True, 1e999])
def test_real_numbers_are_finite(value):
    with pytest.raises(FtplanError, match="price="):
        real("price", value, low=0)
    assert real("price", "2.5", low=0) == 2.5


@pytest.mark.parametrize("target,needle", [("/dev/full", "not a regular file"), ("DIR", "it is a directory"),
                                           ("", "--output is empty")])
def test_report_never_replaces_what_is_not_a_file(tmp_path, target, needle):
    # was: run as root, `report -o /dev/full` renamed the HTML page over the device file
    out = str(tmp_path) if target == "DIR" else target
    r, seconds = _ftplan("report", "-m", "8b", "--gpus", "rtx4090", "--tokens", "10M", "-o", out)
    assert r.returncode == 2 and needle in r.stderr and seconds < 5
    assert os.path.exists("/dev/full") and not os.path.isfile("/dev/full")
    assert list(tmp_path.iterdir()) == []


def test_report_outputs_are_distinct(tmp_path):
    p = str(tmp_path / "r.html")
    r, _ = _ftplan("report", "-m", "8b", "--gpus", "rtx4090", "--tokens", "10M", "-o", p, "--csv", p)
    assert r.returncode == 2 and "name the same file" in r.stderr and list(tmp_path.iterdir()) == []


def test_a_write_the_disk_refuses_is_one_line_with_the_path(tmp_path):
    from ftplan.atomic import atomic_write_text
    from ftplan.errors import WriteError

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):  # root writes anywhere: a read-only folder proves nothing here
            return
        with pytest.raises(WriteError, match=f"cannot write {ro / 'x.txt'}: permission denied"):
            atomic_write_text(ro / "x.txt", "hello")
    finally:
        ro.chmod(0o700)


@pytest.mark.parametrize("name", ["../evil", "a/b", "~root", "with space", ".hidden", "x" * 129, ""])
def test_study_names_are_plain_names(tmp_path, name):
    r, seconds = _ftplan("autotune", "-m", "8b", "--study", name, "--runs-dir", str(tmp_path / "runs"))
    assert r.returncode == 2 and "is not a plain name" in r.stderr, r.stderr
    assert seconds < 5 and not (tmp_path / "runs").exists()


def test_report_of_a_missing_study_creates_no_database(tmp_path):
    pytest.importorskip("optuna")
    r = subprocess.run([sys.executable, "-m", "ftplan", "report", "-m", "8b", "--gpus", "rtx4090", "--tokens", "10M",
                        "--study", "nosuch", "-o", str(tmp_path / "r.html")], capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode == 2 and "no study database" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_damaged_study_database_is_one_line(tmp_path):
    pytest.importorskip("optuna")
    db = tmp_path / "ftplan.db"
    db.write_bytes(b"this is not SQLite" * 200)
    r = subprocess.run([sys.executable, "-m", "ftplan", "report", "-m", "8b", "--gpus", "rtx4090", "--tokens", "10M",
                        "--study", "s", "--storage", f"sqlite:///{db}", "-o", str(tmp_path / "r.html")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and f"the database sqlite:///{db} is damaged" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("args,needle", [
    (("--trials", "0"), "--trials=0"), (("--trial-timeout", "inf"), "--trial-timeout=inf"),
    (("--margin", "nan"), "--margin=nan"), (("--seed", "-1"), "--seed=-1"), (("--time-budget", "0s"), "--time-budget"),
    (("--steps", "1"), "--steps=1"), (("--price", "nan"), "--price=nan"),
])
def test_autotune_numbers_are_checked_before_torch(tmp_path, args, needle):
    # was: 6-8 s (torch imported first) to say "--trials 0 is invalid"
    r, seconds = _ftplan("autotune", "-m", "8b", "--runs-dir", str(tmp_path / "runs"), *args)
    assert r.returncode == 2 and needle in r.stderr, r.stderr
    assert seconds < 5 and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("command", ["profile", "train"])
def test_offline_without_the_weights_answers_at_once(tmp_path, command):
    # was: 71 s of DNS lookups and retries (profile without --synthetic-weights, no network)
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty-cache")}
    if command == "profile":
        args = ("profile", "-m", "1b", "--device", "cpu")
    else:
        cfg = tmp_path / "best.json"
        cfg.write_text(json.dumps({"format": "ftplan-best/1", "model": "1b", "knobs": {}}))
        data = tmp_path / "d.jsonl"
        data.write_text('{"text": "hi"}\n')
        args = ("train", "-c", str(cfg), "--data", str(data))
    r, seconds = _ftplan(*args, env=env)
    assert r.returncode == 2 and "not in the local Hugging Face cache" in r.stderr and "offline mode" in r.stderr
    assert seconds < 2.5  # a Python start-up and the message; no torch import


def test_flags_and_counts_in_the_library():
    import ftplan

    assert ftplan.plan("8b", "rtx4090", double_quant="false", top=1)[0].config.double_quant is False
    with pytest.raises(FtplanError, match="double_quant='maybe' must be true or false"):
        ftplan.plan("8b", "rtx4090", double_quant="maybe")
    with pytest.raises(FtplanError, match="top=0"):  # was: every plan
        ftplan.plan("8b", "rtx4090", top=0)


@pytest.mark.parametrize("gpus,needle", [("h100:", "a count is written"), ("99999xh100", "at most 65,536")])
def test_report_gpu_counts(tmp_path, gpus, needle):
    r, _ = _ftplan("report", "-m", "8b", "--gpus", gpus, "--tokens", "10M", "-o", str(tmp_path / "r.html"))
    assert r.returncode == 2 and needle in r.stderr and list(tmp_path.iterdir()) == []


def test_hours_read_as_people_read_them():
    from ftplan.units import hours_text

    assert [hours_text(h) for h in (12.34, 1.0, 0.5, 1 / 60, 0.0001)] == [
        "12.3 hours", "1.0 hours", "30 minutes", "1 minute", "1 second"]


@pytest.mark.parametrize("row", ["x1,X,inf,1", "x1,X,nan,1", "x1,X,24,inf", "x1,X,1e999,1"])
def test_gpu_files_with_nan_or_inf(tmp_path, row):
    f = tmp_path / "g.csv"
    f.write_text("key,name,memory_gb,price_per_hour\n" + row + "\n")
    r, _ = _ftplan("-m", "8b", "-g", "x1", "--gpu-file", str(f))
    assert r.returncode == 2 and "must be a finite number" in r.stderr and "Traceback" not in r.stderr


DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize("kind,content,needle", [
    ("config", DEEP, "JSON nested too deeply"),
    ("config", '{"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2, '
               '"vocab_size": 1000000000000000000000000000000}', "vocab_size=1000000000000000000000000000000 is beyond"),
    ("config", '{"model_type": "mixtral", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2, '
               '"vocab_size": 100, "num_local_experts": 4, "num_experts_per_tok": 8}', "more than the 4 experts"),
    ("config", '{"model_type": "mamba", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2, '
               '"vocab_size": 100}', "model_type='mamba' is not one ftplan can plan"),
    ("config", "[1, 2]", "expected a JSON object"),
    ("gpus.json", DEEP, "JSON nested too deeply"),
    ("gpus.json", "42", "expected a list of GPU objects"),
])
def test_malformed_model_and_gpu_files(tmp_path, kind, content, needle):
    if kind == "config":
        (tmp_path / "m").mkdir()
        (tmp_path / "m" / "config.json").write_text(content)
        args = ("-m", str(tmp_path / "m"), "-g", "rtx4090")
    else:
        (tmp_path / "gpus.json").write_text(content)
        args = ("-m", "8b", "-g", "x", "--gpu-file", str(tmp_path / "gpus.json"))
    r, seconds = _ftplan(*args)
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert seconds < 5


@pytest.mark.parametrize("content,needle", [
    (('{"text": ' + DEEP + "}\n").encode(), ":1: JSON nested too deeply"),
    (b'{"text": "a\\ud800b"}\n', ":1: field 'text' holds a lone surrogate"),
    (b'{"text": "ok"}\n{"text": "\xff\xfe"}\n', ":2: not UTF-8 text"),
    (b'{"messages": [{"role": "user", "content": "\\udfff"}, {"role": "assistant", "content": "x"}]}\n', "lone surrogate"),
    (b"[1, 2]\n", "expected a JSON object"),
])
def test_malformed_training_data(tmp_path, content, needle):
    from ftplan.train.data import read_jsonl

    f = tmp_path / "d.jsonl"
    f.write_bytes(content)
    with pytest.raises(FtplanError, match=needle.replace("\\", "\\\\").replace("(", "\\(")):
        read_jsonl(f)


@pytest.mark.parametrize("content,needle", [(DEEP, "JSON nested too deeply"), ("[]", "has no 'model' and 'knobs'"),
                                            ('{"model": "1b", "knobs": [1]}', "has no 'model' and 'knobs'")])
def test_malformed_best_json(tmp_path, content, needle):
    cfg = tmp_path / "best.json"
    cfg.write_text(content)
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "hi"}\n')
    r, seconds = _ftplan("train", "-c", str(cfg), "--data", str(data))
    assert r.returncode == 2 and needle in r.stderr and seconds < 5


def test_a_price_file_that_is_not_utf8(tmp_path):
    f = tmp_path / "p.csv"
    f.write_bytes(b"gpu,price_per_hour\n\xff\xfe,1\n")
    r, _ = _ftplan("report", "-m", "8b", "--gpus", "rtx4090", "--tokens", "1M", "--prices", str(f), "-o",
                   str(tmp_path / "r.html"))
    assert r.returncode == 2 and "not UTF-8 text" in r.stderr and not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("where", ["file", "/proc/self/x", "/dev/null", "file/below"])
def test_output_folders_that_cannot_be_folders(tmp_path, where):
    (tmp_path / "file").write_text("mine")
    out = str(tmp_path / where) if not where.startswith("/") else where
    cfg = tmp_path / "best.json"
    cfg.write_text(json.dumps({"format": "ftplan-best/1", "model": "1b", "synthetic_weights": True, "knobs": {}}))
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "hi"}\n')
    before = sorted(os.listdir(tmp_path))
    r, seconds = _ftplan("train", "-c", str(cfg), "--data", str(data), "-o", out)
    assert r.returncode == 2 and "--output" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r2, _ = _ftplan("autotune", "-m", "1b", "--runs-dir", out)
    assert r2.returncode == 2 and "--runs-dir" in r2.stderr, r2.stderr
    assert seconds < 5 and sorted(os.listdir(tmp_path)) == before and (tmp_path / "file").read_text() == "mine"


@pytest.mark.parametrize("args,needle", [
    (("gpus", "--gpu-file", "/dev/zero"), "is not a regular file"),  # was read forever
    (("report", "-m", "8b", "--gpus", "t4", "--tokens", "1M", "--pdf", "/proc/self/status"), "under /proc"),
    (("report", "-m", "8b", "--gpus", ",".join(["h100"] * 65), "--tokens", "1M"), "at most 64"),
    (("profile", "-m", "1b", "--synthetic-weights", "--steps", "2147483648"), "--steps=2147483648"),
    (("profile", "-m", "1b", "--synthetic-weights", "--device", "nope"), "--device 'nope' is not valid"),
    (("autotune", "-m", "1b", "--device", "nope"), "--device 'nope' is not valid"),
])
def test_found_by_the_fuzz_benchmark(tmp_path, args, needle):
    r, seconds = _ftplan(*args)
    assert r.returncode == 2 and needle in r.stderr, r.stderr
    assert seconds < 5


def test_train_checks_its_data_and_device_before_torch(tmp_path):
    cfg = tmp_path / "best.json"
    cfg.write_text(json.dumps({"format": "ftplan-best/1", "model": "1b", "synthetic_weights": True, "knobs": {}}))
    good = tmp_path / "d.jsonl"
    good.write_text('{"text": "hi"}\n')
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "hi"}\n{"oops"\n')
    for extra, needle in ((("--data", str(bad)), f"{bad}:2"), (("--data", str(good), "--eval-data", str(bad)), f"{bad}:2"),
                          (("--data", str(good), "--device", "tpu"), "--device 'tpu'"),
                          (("--data", "/dev/zero"), "not a regular file")):
        r, seconds = _ftplan("train", "-c", str(cfg), "-o", str(tmp_path / "out"), *extra)
        assert r.returncode == 2 and needle in r.stderr and seconds < 5, (extra, r.stderr)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args,needle", [
    (("train", "-c", "CFG", "--data", "DATA", "-o", "x" * 5000), "not a usable path"),
    (("autotune", "-m", "1b", "--runs-dir", "x" * 5000), "not a usable path"),
    (("train", "-c", "CFG", "--data", "DATA", "--model", "/dev/full"), "not a regular file"),
    (("autotune", "-m", "1b", "--storage", "sqlite:///DAMAGED"), "is damaged"),
    (("autotune", "-m", "1b", "--then-train", "--train-steps", "-1", "--data", "DATA"), "--train-steps=-1"),
    (("autotune", "-m", "1b", "--then-train", "--data", "DATA", "-o", "/proc/self/status"), "under /proc"),
    (("autotune", "-m", "1b", "--then-train"), "--then-train needs --data"),
])
def test_found_by_the_second_fuzz_run(tmp_path, args, needle):
    cfg = tmp_path / "best.json"
    cfg.write_text(json.dumps({"format": "ftplan-best/1", "model": "1b", "synthetic_weights": True, "knobs": {}}))
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "hi"}\n')
    (tmp_path / "bad.db").write_bytes(b"not sqlite" * 300)
    subst = {"CFG": str(cfg), "DATA": str(data), "sqlite:///DAMAGED": f"sqlite:///{tmp_path / 'bad.db'}"}
    r, seconds = _ftplan(*(subst.get(a, a) for a in args))
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert seconds < 5


@pytest.mark.parametrize("row", ["key,name,memory_gb\nx,X,0.3\n", "key,name,nvidia_smi_total_mib\nx,X,100\n"])
def test_gpu_files_that_leave_no_usable_memory(tmp_path, row):
    # was: "-0.29 GiB usable" and a plan against it
    f = tmp_path / "g.csv"
    f.write_text(row)
    r, _ = _ftplan("-m", "8b", "-g", "x", "--gpu-file", str(f))
    assert r.returncode == 2 and "less than 256 MiB" in r.stderr


@pytest.mark.parametrize("args,needle", [
    (("gpus", "--gpu-file", "GK"), "key=5 must be text"),
    (("autotune", "-m", "1b", "--runs-dir", ""), "--runs-dir is empty"),
    (("autotune", "-m", "1b", "--device", "cpu", "--gpu", "with space"), "unknown GPU 'with space'"),
    (("autotune", "-m", "1b", "--data", "missing.jsonl"), "does not exist"),
    (("train", "-c", "CFG", "--data", "DATA", "--gpus", "99999999999999999999999"), "beyond the largest accepted"),
])
def test_found_by_the_last_fuzz_run(tmp_path, args, needle):
    (tmp_path / "gk.json").write_text('[{"key": 5}]')
    cfg = tmp_path / "best.json"
    cfg.write_text(json.dumps({"format": "ftplan-best/1", "model": "1b", "synthetic_weights": True, "knobs": {}}))
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "hi"}\n')
    subst = {"GK": str(tmp_path / "gk.json"), "CFG": str(cfg), "DATA": str(data)}
    r = subprocess.run([sys.executable, "-m", "ftplan", *(subst.get(a, a) for a in args)], capture_output=True,
                       text=True, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and needle in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1  # one line, no blank line before it
