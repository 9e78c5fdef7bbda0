"""The training loop of ``ftplan train``.

It mirrors what ``transformers.Trainer`` does for one process (the same model preparation as ``ftplan
profile``: kbit preparation, PEFT, checkpointing; forward and loss under autocast in the configuration's
compute dtype, backward, optimizer step every ``grad_accum`` micro-batches, a linear warm-up then linear
decay of the learning rate) with what a long run needs: the data order is a pure function of the seed
and the epoch, so a resume needs only the step number; checkpoints are atomic; a log line per step goes
to ``<output>/log.jsonl``.

Under fp16 compute (GPUs without bf16) the loss is scaled by a ``torch.amp.GradScaler`` as
``Trainer(fp16=True)`` does: the scaled loss is back-propagated, the step goes through the scaler
(skipped, with the scheduler, when gradients overflow), and checkpoints keep the scaler's state.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..atomic import atomic_write_text
from ..best import DEFAULT_LR, best_config, best_knobs
from ..errors import FtplanError
from . import checkpoint as C
from . import dist as D
from .data import IGNORE, batches, length_grouped, pack, read_jsonl, tokenize

if TYPE_CHECKING:
    from ..tracking import TrackSpec


@dataclass
class TrainOptions:
    config: dict[str, Any]  # a best.json document (or {"model": ..., "knobs": {...}})
    data: str
    output: Path
    model: str | None = None
    eval_data: str | None = None
    max_steps: int | None = None
    epochs: float = 1.0
    lr: float = DEFAULT_LR
    warmup_steps: int = 0
    save_every: int = 50
    keep: int = 2
    resume: bool = False
    packing: bool = False
    group_by_length: bool = False  # micro-batches of similar lengths (less padding; data.length_grouped)
    seed: int = 0
    device: str | None = None
    synthetic_weights: bool | None = None
    merge: bool = False
    log_every: int = 1
    report_to: str = "none"  # none | mlflow | tensorboard | wandb (ftplan.tracking)
    tracking_uri: str | None = None
    experiment: str | None = None


MAX_LR = 1.0  # a peak learning rate above 1 is a typo (LoRA uses ~1e-4 to 1e-3, full fine-tuning ~1e-5)


def check_options(opts: TrainOptions) -> TrackSpec:
    """Every number of ``opts`` finite and in range, before anything heavy is imported: an FtplanError
    naming the option and what is valid (a NaN learning rate would train an all-NaN adapter; ``--keep 0``
    would delete each checkpoint as it is written, so a resume would start over). Returns the tracking
    options (``ftplan.tracking.TrackSpec``)."""
    from ..units import real, whole

    for name, v in (("--max-steps", opts.max_steps), ("--save-every", opts.save_every), ("--keep", opts.keep),
                    ("--log-every", opts.log_every)):
        if v is not None or name != "--max-steps":
            whole(name, v, 1, 10**9)
    whole("--warmup-steps", opts.warmup_steps, 0, 10**9)
    whole("--seed", opts.seed, 0, 2**63 - 1)
    real("--epochs", opts.epochs, low=0, low_open=True, high=1e6)
    real("--lr", opts.lr, low=0, low_open=True, high=MAX_LR)
    if opts.packing and opts.group_by_length:
        raise FtplanError("--packing and --group-by-length: packed sequences all have the same length, so there is "
                          "nothing to group; use one of them")
    from ..atomic import check_folder
    from ..stack.env import check_device_name

    check_folder(opts.output, "--output")
    check_device_name(opts.device)
    from ..tracking import check as check_tracking

    track = check_tracking(opts.report_to, opts.tracking_uri, opts.experiment)
    read_jsonl(opts.data)  # every line checked now, not after the model is built
    if opts.eval_data:
        read_jsonl(opts.eval_data)
    model = opts.model or opts.config.get("model")
    synthetic = bool(opts.config.get("synthetic_weights")) if opts.synthetic_weights is None else opts.synthetic_weights
    from ..profiles.models import get_model

    spec = get_model(model)  # a name, path or config that cannot be one: said before torch
    best_config(opts.config, model)  # every knob of the document validated too
    if not synthetic and isinstance(model, str):  # no network: say so at once, not after torch and retries
        from ..profiles.hf_config import require_weights_source

        require_weights_source(model, spec.hf_id, "weights and tokenizer")
    return track


@dataclass
class TrainResult:
    output: Path
    steps: int
    resumed_from: int
    losses: list[float]
    eval_loss: float | None
    files: dict[str, str]
    model: Any = field(default=None, repr=False)
    tracked: str | None = None  # where the tracked run is (--report-to)


def fingerprint(model: str, knobs: dict[str, Any], data: str, seed: int, packing: bool, lr: float,
                grouped: bool = False) -> str:
    doc = {"model": model, "knobs": knobs, "data": hashlib.sha256(Path(data).read_bytes()).hexdigest(),
           "seed": seed, "packing": packing, "lr": lr}
    if grouped:  # (absent otherwise: a run checkpointed before the option existed resumes as it was)
        doc["group_by_length"] = True
    blob = json.dumps(doc, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def prepare_rows(path: str, tok, seq_len: int, packing: bool) -> list:
    rows = [tokenize(e, tok, seq_len) for e in read_jsonl(path)]
    rows = [r for r in rows if any(x != IGNORE for x in r[1])]  # truncated to prompt only: nothing to learn
    if packing:
        rows = pack(rows, seq_len)
    return rows


def _order(n: int, seed: int, epoch: int) -> list[int]:
    import torch

    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def _tensor_batch(b: dict, device: str) -> dict:
    import torch

    return {k: torch.tensor(v, dtype=torch.long, device=device) for k, v in b.items()}


def _memory(device: str) -> int:
    import torch

    if device == "cuda":
        return int(torch.cuda.max_memory_allocated())
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def check_device_precision(cfg, dev: str) -> None:
    """A configuration that computes in bf16 cannot run on a CUDA GPU without bf16 (compute capability < 8):
    say so before loading anything (the plan was made for another GPU)."""
    import torch

    bf16 = cfg.compute_dtype == "bf16" and (cfg.autocast or cfg.is_quantized) or cfg.quant == "bf16"
    if dev == "cuda" and bf16 and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise FtplanError(f"{torch.cuda.get_device_name()} has no bf16 but the configuration computes in bf16: "
                          "plan for this GPU (ftplan autotune --gpu auto) or set \"compute_dtype\": \"fp16\" "
                          "in the knobs of --config")


def scaler_state(scaler) -> dict[str, Any]:
    """The scaler's state for a checkpoint's ``state.json`` (plain floats and ints: JSON keeps them
    exactly); empty when scaling is off."""
    return {"grad_scaler": scaler.state_dict()} if scaler.is_enabled() else {}


def build(opts: TrainOptions):
    """(model name, spec, config, device, tokenizer, synthetic) from the options (no weights yet)."""
    from ..stack.env import require_stack, resolve_device
    from .tokenizer import load_tokenizer

    require_stack()
    doc = opts.config
    model = opts.model or doc["model"]
    spec, cfg = best_config(doc, model)
    synthetic = bool(doc.get("synthetic_weights")) if opts.synthetic_weights is None else opts.synthetic_weights
    dev = resolve_device(opts.device or (doc.get("device") if doc.get("device") in ("cpu", "cuda") else None))
    check_device_precision(cfg, dev)
    tok = load_tokenizer(model, spec.vocab, synthetic, spec.hf_id)
    return model, spec, cfg, dev, tok, synthetic


def train(opts: TrainOptions, on_log: Callable[[dict], None] | None = None) -> TrainResult:
    track = check_options(opts)  # before the training stack is imported
    import torch

    from ..stack.build import build_model
    from ..stack.loss import for_loss
    from ..stack.optim import autocast, grad_scaler, make_optimizer, optimizer_step

    model_name, spec, cfg, dev, tok, synthetic = build(opts)
    rows = prepare_rows(opts.data, tok, cfg.seq_len, opts.packing)  # every line checked before training
    eval_rows = prepare_rows(opts.eval_data, tok, cfg.seq_len, opts.packing) if opts.eval_data else None
    d = D.setup(dev)
    fsdp = D.sharded(cfg, d)  # refused before the model is built: what ftplan train cannot shard
    if fsdp and cfg.is_quantized:
        D.teardown(d)
        raise FtplanError("ftplan train shards 16-bit models with FSDP; a 4-bit or 8-bit base under FSDP runs the TRL "
                          "script ftplan writes for the plan (ftplan train --gpus N --config best.json prints the command)")
    if fsdp and cfg.loss_impl == "chunked":
        D.teardown(d)
        raise FtplanError("ftplan train runs the chunked loss on one process or under DDP; an FSDP plan uses the "
                          "standard loss (set \"loss_impl\": \"standard\" in the knobs, or re-plan)")
    per_epoch = len(rows) // cfg.micro_batch
    per_step = cfg.grad_accum * d.world  # micro-batches per optimizer step, all processes together
    if per_epoch < per_step:
        raise FtplanError(f"{opts.data} gives {len(rows)} examples: fewer than one optimizer step of "
                          f"{cfg.micro_batch} x {cfg.grad_accum} x {d.world} (micro-batch x accumulation x processes)")
    steps_per_epoch = per_epoch // per_step
    total = opts.max_steps or max(1, math.ceil(opts.epochs * steps_per_epoch))
    out = Path(opts.output)
    ckroot = out / "checkpoints"
    knobs = best_knobs(opts.config)
    fp = fingerprint(model_name, knobs, opts.data, opts.seed, opts.packing, opts.lr, opts.group_by_length)
    last = C.latest(ckroot)
    if last is not None and not opts.resume:
        D.teardown(d)
        raise FtplanError(f"{out} already holds checkpoints (latest {last.name}): add --resume to continue, "
                          "or choose another --output")
    from .track import TrainTracking

    # the store is opened (an unreachable server said) before the model is built; the run starts after a resume
    try:
        tracked = TrainTracking(track if d.main else None, out, opts.config)
    except FtplanError:
        D.teardown(d)
        raise

    model = build_model(model_name, spec, cfg, dev, synthetic=synthetic, seed=opts.seed)
    model = D.shard(model, cfg, d)  # FSDP2: before the optimizer, whose parameters are then the shards
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(cfg.optimizer, params, dev)
    for g in opt.param_groups:
        g["lr"] = opts.lr
    warm = opts.warmup_steps

    def lr_lambda(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total - step) / max(1, total - warm))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    scaler = grad_scaler(cfg, dev)
    start = 0
    if opts.resume and last is not None:
        state = C.load(last, model, opt, sched, fp,
                       load_full=(lambda m, o: D.load_full_state(model, opt, m, o)) if fsdp else None)
        start = int(state["step"])
        if d.main:
            _trim_log(out / "log.jsonl", start)  # the steps after the checkpoint are run again
        if scaler.is_enabled() and "grad_scaler" in state:
            scaler.load_state_dict(state["grad_scaler"])
    # loss_impl="chunked": the decoder, then lm_head fused with the chunked loss (ftplan.stack.loss); DDP wraps
    # that module, whose parameters are the model's
    net = D.wrap(for_loss(model, cfg.loss_impl), d, dev, cfg)  # after loading: every process starts from the same weights
    out.mkdir(parents=True, exist_ok=True)
    pad = tok.pad_id if tok.pad_id is not None else 0
    losses: list[float] = []
    log = open(out / "log.jsonl", "a", buffering=1) if d.main else open(os.devnull, "w")
    order_cache: dict[int, list[int]] = {}

    def micro_batch(m: int) -> dict:
        epoch, pos = divmod(m, per_epoch)
        if epoch not in order_cache:
            order_cache.clear()
            order = _order(len(rows), opts.seed, epoch)
            if opts.group_by_length:
                order = length_grouped(order, [len(i) for i, _ in rows], cfg.micro_batch)
            order_cache[epoch] = order
        idx = order_cache[epoch][pos * cfg.micro_batch:(pos + 1) * cfg.micro_batch]
        return next(batches(rows, cfg.micro_batch, pad, idx))

    tracked.start(knobs, opts, dev, d.world, start, total, model_name)
    model.train()
    try:
        for step in range(start, total):
            t0 = time.perf_counter()
            step_loss, tokens = 0.0, 0
            for j in range(cfg.grad_accum):
                b = _tensor_batch(micro_batch((step * cfg.grad_accum + j) * d.world + d.rank), dev)
                with D.no_sync(net, d, j == cfg.grad_accum - 1, model if fsdp else None):
                    with autocast(cfg, dev):
                        loss = net(**b).loss
                    scaler.scale(loss / cfg.grad_accum).backward()
                step_loss += float(loss.detach()) / cfg.grad_accum
                tokens += int(b["attention_mask"].sum()) * d.world
            stepped = optimizer_step(opt, scaler)
            if stepped:
                sched.step()
            opt.zero_grad(set_to_none=True)
            if dev == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            step_loss = D.mean(step_loss, d, dev)
            losses.append(step_loss)
            rec = {"step": step + 1, "total": total, "loss": step_loss, "lr": sched.get_last_lr()[0],
                   "tokens_per_s": tokens / dt if dt > 0 else None, "memory_bytes": _memory(dev),
                   "epoch": (step + 1) / steps_per_epoch}
            if scaler.is_enabled():
                rec.update(loss_scale=scaler.get_scale(), skipped=not stepped)
            log.write(json.dumps(rec) + "\n")
            tracked.step(rec)
            if on_log is not None and d.main and ((step + 1) % opts.log_every == 0 or step + 1 == total):
                on_log(rec)
            if (step + 1) % opts.save_every == 0 and step + 1 < total:
                full = D.full_state(model, opt) if fsdp else None  # a collective: every rank gathers
                if d.main:
                    C.save(ckroot, step + 1, model, opt, sched, {"fingerprint": fp, "loss": step_loss, **scaler_state(scaler)},
                           opts.keep, full=full)
                D.barrier(d)
        full = D.full_state(model, opt) if fsdp else None  # every rank takes part; rank 0 gets the whole state
        eval_loss = evaluate(model, eval_rows, cfg, dev, pad) if (eval_rows and fsdp) else None  # collective forwards
        if not d.main:
            D.barrier(d)
            D.teardown(d)
            return TrainResult(out, total, start, losses, None, {}, model)
        files = _finish(out, model, cfg, tok, opts, ckroot, total, opt, sched, fp, losses, start, model_name, spec, dev,
                        synthetic, scaler, full)
        if eval_rows and not fsdp:
            eval_loss = evaluate(model, eval_rows, cfg, dev, pad)
        if eval_loss is not None:
            atomic_write_text(out / "eval.json", json.dumps({"eval_loss": eval_loss}) + "\n")
    except BaseException as e:
        tracked.fail(e)
        raise
    finally:
        log.close()
    tracked.end(total, eval_loss)
    D.barrier(d)
    D.teardown(d)
    return TrainResult(out, total, start, losses, eval_loss, files, model, tracked.where)


def _trim_log(path: Path, step: int) -> None:
    """Drop the records of steps after ``step`` from ``log.jsonl`` (a killed run logged them, the resumed
    run logs them again), atomically; lines that are not records (a line cut by a kill) go too."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= step:
            kept.append(line)
    atomic_write_text(path, "".join(x + "\n" for x in kept))


def _finish(out, model, cfg, tok, opts, ckroot, total, opt, sched, fp, losses, start, model_name, spec, dev, synthetic,
            scaler, full=None):
    C.save(ckroot, total, model, opt, sched,
           {"fingerprint": fp, "loss": losses[-1] if losses else None, **scaler_state(scaler)}, opts.keep, full=full)
    files: dict[str, str] = {}
    name = "adapter" if cfg.is_lora else "model"

    def write(folder: Path) -> None:
        if full is not None:  # FSDP2: the gathered trainable weights (peft keeps the adapter's among them)
            model.save_pretrained(folder, state_dict=full[0])
        else:
            model.save_pretrained(folder)
        tok.save(folder)

    files[name] = str(C.save_folder_atomic(out / name, write))
    doc = {**opts.config, "model": model_name, "trained": {"steps": total, "resumed_from": start, "seed": opts.seed,
                                                           "lr": opts.lr, "packing": opts.packing,
                                                           "group_by_length": opts.group_by_length, "data": opts.data,
                                                           "synthetic_weights": synthetic, "device": dev}}
    atomic_write_text(out / "ftplan-config.json", json.dumps(doc, indent=2) + "\n")
    files["config"] = str(out / "ftplan-config.json")
    if opts.merge:
        files["merged"] = str(merge(out, doc, dev))
    return files


def evaluate(model, rows, cfg, dev: str, pad: int) -> float:
    """Mean loss over the evaluation rows (no gradients), under the training's autocast."""
    import torch

    from ..stack.loss import for_loss
    from ..stack.optim import autocast

    net = for_loss(model, cfg.loss_impl)
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for b in batches(rows, cfg.micro_batch, pad, list(range(len(rows)))):
            t = _tensor_batch(b, dev)
            with autocast(cfg, dev):
                total += float(net(**t).loss)
            n += 1
    model.train()
    return total / max(n, 1)


def load_trained(output: str | Path, device: str | None = None):
    """The trained model back from ``output``: the base built as training built it (same weights or
    the same synthetic seed, same preparation), the saved adapter loaded with ``peft.PeftModel``."""
    import peft

    from ..stack.build import load_base
    from ..stack.env import resolve_device

    out = Path(output)
    doc = json.loads((out / "ftplan-config.json").read_text())
    tr = doc["trained"]
    spec, cfg = best_config(doc)
    dev = resolve_device(device or tr["device"])
    base = load_base(doc["model"], spec, cfg, dev, synthetic=tr["synthetic_weights"], seed=tr["seed"])
    if not cfg.is_lora:
        import transformers

        return transformers.AutoModelForCausalLM.from_pretrained(out / "model").to(dev)
    if cfg.is_quantized and cfg.prepare_kbit:
        base = peft.prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    m = peft.PeftModel.from_pretrained(base, out / "adapter")
    return m.to(dev)


def merge(out: Path, doc: dict[str, Any], dev: str) -> Path:
    """Merged weights: the adapter added into a 16-bit copy of the base in the compute dtype (never into
    4-bit weights, which would round the update away), written to ``<output>/merged``."""
    import peft

    from ..stack.build import load_base, torch_dtype

    spec, cfg = best_config(doc)
    if not cfg.is_lora:
        return out / "model"
    _, base_cfg = best_config(doc, method="lora", quant=cfg.compute_dtype)
    tr = doc["trained"]
    base = load_base(doc["model"], spec, base_cfg, dev, synthetic=tr["synthetic_weights"], seed=tr["seed"])
    merged = peft.PeftModel.from_pretrained(base, out / "adapter").merge_and_unload()
    merged = merged.to(torch_dtype(cfg.compute_dtype))
    return C.save_folder_atomic(out / "merged", lambda folder: merged.save_pretrained(folder))
