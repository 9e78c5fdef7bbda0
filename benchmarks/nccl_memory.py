"""NCCL's own device memory per process, measured: what ``planner.memory.overhead.nccl_bytes`` (a prior from
published measurements) stands for. Needs two CUDA GPUs or more; run it under torchrun:

    torchrun --nproc-per-node 2 benchmarks/nccl_memory.py [--out FILE] [--mib 64]
    python benchmarks/nccl_memory.py --dry-run      # one process over gloo on the CPU: the flow only (CI runs it)

Each rank creates its CUDA context, then measures the device memory in use (``torch.cuda.mem_get_info``: each
rank has its GPU to itself) less what PyTorch's caching allocator reserves, at each point: after
``init_process_group("nccl")``, after a first all-reduce, after an all-gather and a reduce-scatter of ``--mib``
MiB (FSDP's collectives), and after a barrier. What grows beyond the allocator between the first point and the
last is NCCL's (its kernels, channels and buffers); rank 0 writes every rank's figures with the provenance (GPU,
driver, NCCL version, world size, the ``NCCL_*`` variables set) beside ftplan's prior for that many GPUs, to
``benchmarks/results/nccl_memory-<gpu>-<n>gpu-<date>.json`` unless ``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _outside_allocator(torch, device) -> int:
    """Device bytes in use that PyTorch's allocator does not hold: CUDA context, NCCL, other libraries."""
    torch.cuda.synchronize(device)
    free, total = torch.cuda.mem_get_info(device)
    return (total - free) - torch.cuda.memory_reserved(device)


def measure(dry_run: bool, mib: int) -> dict:
    import torch
    import torch.distributed as dist

    if dry_run:
        import tempfile

        init = Path(tempfile.mkdtemp()) / "init"
        dist.init_process_group("gloo", init_method=f"file://{init}", rank=0, world_size=1)
        device = torch.device("cpu")
    else:
        rank = int(os.environ["LOCAL_RANK"])
        device = torch.device("cuda", rank)
        torch.cuda.set_device(device)
        torch.ones(1, device=device)  # the CUDA context exists before the first figure
    points: dict[str, int | None] = {}

    def mark(name: str) -> None:
        points[name] = None if dry_run else _outside_allocator(torch, device)

    mark("before_init")
    if not dry_run:
        dist.init_process_group("nccl", device_id=device)
    world = dist.get_world_size()
    mark("after_init")
    x = torch.ones(1024, device=device)
    dist.all_reduce(x)
    mark("after_all_reduce")
    n = mib * 2**20 // 2  # bf16 elements
    shard = torch.ones(n // world, dtype=torch.bfloat16, device=device)
    full = torch.empty(n // world * world, dtype=torch.bfloat16, device=device)
    # FSDP's collectives (named *_single from torch 2.13, *_tensor before)
    (getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor)(full, shard)
    mark("after_all_gather")
    out = torch.empty(n // world, dtype=torch.bfloat16, device=device)
    (getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor)(out, full)
    mark("after_reduce_scatter")
    dist.barrier()
    mark("after_barrier")
    base, last = points["before_init"], points["after_barrier"]
    rec = {"rank": dist.get_rank(), "world_size": world, "points_outside_allocator": points,
           "nccl_bytes": None if base is None or last is None else last - base}
    gathered: list = [None] * world
    dist.all_gather_object(gathered, rec)
    dist.destroy_process_group()
    return {"ranks": gathered, "world_size": world}


def provenance(torch, dry_run: bool) -> dict:
    prov = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
            "command": "python benchmarks/nccl_memory.py" + (" --dry-run" if dry_run else " (under torchrun)"),
            "nccl_env": {k: v for k, v in os.environ.items() if k.startswith("NCCL_")}}
    if not dry_run:
        prov["gpu"] = torch.cuda.get_device_name(0)
        prov["nccl"] = ".".join(str(p) for p in torch.cuda.nccl.version())
        prov["cuda"] = torch.version.cuda
    return prov


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="one process over gloo on the CPU: the flow only")
    ap.add_argument("--mib", type=int, default=64, help="size of the all-gather / reduce-scatter, MiB")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    import torch

    if not a.dry_run and (not torch.cuda.is_available() or "LOCAL_RANK" not in os.environ):
        print("nccl_memory.py needs CUDA GPUs and torchrun (torchrun --nproc-per-node 2 benchmarks/nccl_memory.py); "
              "--dry-run walks the flow on the CPU", file=sys.stderr)
        return 2
    res = measure(a.dry_run, a.mib)
    if not a.dry_run and int(os.environ.get("RANK", "0")) != 0:
        return 0
    from ftplan.planner.memory.overhead import nccl_bytes
    from ftplan.planner.types import MiB

    world = res["world_size"]
    prior = nccl_bytes(None, world)
    doc = {"provenance": provenance(torch, a.dry_run), "mib": a.mib, "prior_bytes": prior, **res}
    print(f"{'rank':>4} {'NCCL measured':>14} {'ftplan prior':>13}")
    for r in res["ranks"]:
        got = r["nccl_bytes"]
        print(f"{r['rank']:>4} {'-' if got is None else f'{got / MiB:.0f} MiB':>14} {prior / MiB:>9.0f} MiB")
    if a.out:
        out = Path(a.out)
    else:
        gpu = "cpu" if a.dry_run else torch.cuda.get_device_name(0).lower().replace(" ", "-")
        out = ROOT / "benchmarks" / "results" / f"nccl_memory-{gpu}-{world}gpu-{dt.date.today():%Y%m%d}.json"
    from ftplan.atomic import atomic_write_text

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(doc, indent=1) + "\n")
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
