"""The live-storage tracker against allocations of known size (exact)."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from ftplan.measure.tracker import LiveStorageTracker


def test_counts_each_storage_once_and_frees_it():
    tr = LiveStorageTracker()
    with tr:
        a = torch.empty(1000, dtype=torch.float32)  # 4000 B
        v = a.view(10, 100)  # a view: no new storage
        a.add_(1)  # in place: no new storage
        b = torch.empty(500, dtype=torch.bfloat16)  # 1000 B
        assert tr.current == 5000
        del b
        assert tr.current == 4000
        c = a * 2  # 4000 B
        assert tr.current == 8000
        del c, v
    assert tr.peak == 8000
    assert tr.current == 4000


def test_phase_report_reconstructs_the_live_set_at_the_peak():
    tr = LiveStorageTracker()
    with tr:
        keep = torch.empty(256, dtype=torch.uint8)
        tr.start_phase()
        with tr.scope("logits_loss"):
            big = torch.empty(1024, dtype=torch.uint8)
        del big
        small = torch.empty(100, dtype=torch.uint8)
        rep = tr.phase_report("p")
    assert rep.peak_bytes == 256 + 1024
    assert rep.breakdown == {"activations": 256, "logits_loss": 1024}
    assert rep.end_bytes == 356
    del keep, small


def test_labels_and_weight_copies():
    w = torch.nn.Parameter(torch.zeros(64, 64))
    tr = LiveStorageTracker()
    tr.track([w], "weights_dense", weight=True)
    with tr:
        tr.start_phase()
        copy = w.to(torch.bfloat16)  # an autocast-style copy of a weight
        g = torch.ones(64, 64)
        tr.label([g], "gradients")
        rep = tr.phase_report("p")
    assert rep.breakdown == {"weights_dense": 64 * 64 * 4, "autocast_weight_copies": 64 * 64 * 2,
                             "gradients": 64 * 64 * 4}
    del copy


def test_cap_raises_out_of_memory():
    tr = LiveStorageTracker(cap_bytes=1000)
    with pytest.raises(torch.OutOfMemoryError):
        with tr:
            torch.empty(2000, dtype=torch.uint8)


def test_fake_tensors_count_their_real_size_without_memory():
    tr = LiveStorageTracker()
    with FakeTensorMode(), tr:
        x = torch.empty(1 << 30, dtype=torch.bfloat16)  # 2 GiB, never allocated
        y = x * 2
        del y
    assert tr.peak == 4 * 2**30
    assert tr.current == 2 * 2**30
    del x


def test_a_storage_resized_in_place_dies_and_is_born_again():
    """FSDP2 frees a unit's unsharded parameters by resizing their storage to 0 and re-allocates them the
    same way; ``resized`` records both, and the phase report sees each allocation at its own size."""
    tr = LiveStorageTracker()
    with tr:
        t = torch.empty(1000, dtype=torch.uint8)
        tr.start_phase()
        t.untyped_storage().resize_(0)
        tr.resized(t, "fsdp_gathered")
        assert tr.current == 0
        t.untyped_storage().resize_(600)
        tr.resized(t, "fsdp_gathered")
        assert tr.current == 600
        rep = tr.phase_report("p")
    assert rep.peak_bytes == 1000 and rep.end_bytes == 600
    del t


def _one_tracked_step(net, follow: str):
    """(live bytes before, the step's phase report, gathered bytes still live after) of one forward and
    backward of ``net`` under the tracker with ``follow`` (its ``follow_fsdp1``/``follow_fsdp2``)."""
    tr = LiveStorageTracker()
    tr.track([p for p in net.parameters()], "weights_dense", weight=True)
    before = tr.current
    with tr, getattr(tr, follow)():
        tr.start_phase()
        net(torch.ones(4, 64)).sum().backward()
        rep = tr.phase_report("step")
    return before, rep, sum(r.nbytes for r in tr._live.values() if r.tag == "fsdp_gathered")


def test_follow_fsdp2_counts_gathered_parameters_only_while_unsharded():
    """A one-process FSDP2 unit over a fake process group of 2: after the forward the unit reshards, and
    the tracker no longer counts its gathered parameters (without following the resizes it would)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from ftplan.measure.distributed import fake_rank0

    with fake_rank0():
        mesh = init_device_mesh("cpu", (2,))
        lin = torch.nn.Sequential(torch.nn.Linear(64, 64, bias=False), torch.nn.Linear(64, 64, bias=False))
        fully_shard(lin[0], mesh=mesh)
        fully_shard(lin, mesh=mesh)
        before, rep, gathered_now = _one_tracked_step(lin, "follow_fsdp2")
        assert before == 2 * 32 * 64 * 4  # two fp32 shards of 32 x 64
        assert rep.breakdown["fsdp_gathered"] == 64 * 64 * 4  # one 64 x 64 fp32 unit gathered at the peak
        # after the backward every non-root unit is resharded: the live set is shards, gradients, input
        assert gathered_now == 0  # both units resharded after the backward: their storages resized to 0


def test_follow_fsdp1_counts_the_unsharded_flat_parameter_only_while_gathered():
    """The same with FSDP1 (``FullyShardedDataParallel`` on the CPU): a unit's padded unsharded flat parameter
    is allocated by a storage resize before its all-gather and freed by one after use; followed, the peak
    holds both 64 x 64 fp32 units gathered (the root's and the inner one's) and nothing stays gathered after
    the backward."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    from ftplan.measure.distributed import fake_rank0

    with fake_rank0():
        lin = torch.nn.Sequential(torch.nn.Linear(64, 64, bias=False), torch.nn.Linear(64, 64, bias=False))
        lin[0] = FSDP(lin[0], device_id=torch.device("cpu"), use_orig_params=True)
        net = FSDP(lin, device_id=torch.device("cpu"), use_orig_params=True)
        before, rep, gathered_now = _one_tracked_step(net, "follow_fsdp1")
        assert before == 2 * 32 * 64 * 4  # two fp32 flat shards of 64 x 64 / 2
        assert rep.breakdown["fsdp_gathered"] == 2 * 64 * 64 * 4
        assert gathered_now == 0
