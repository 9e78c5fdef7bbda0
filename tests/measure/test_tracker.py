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
