"""A tensor-level live-memory tracker: a ``TorchDispatchMode`` that counts distinct live storages.

Every tensor an operator returns is looked at; its storage is counted once (views and in-place
results share it) from the moment it first appears until torch frees it (a weak reference's
callback on the storage object, which torch keeps alive exactly as long as the storage). The sum
of live storages' ``nbytes`` is the tensor-level analogue of ``torch.cuda.memory_allocated`` without
the allocator's rounding; its maximum over a phase is the analogue of ``max_memory_allocated``.

It works on real CPU tensors and on ``FakeTensor``s (whose meta storages have the real sizes), so the
same tracker measures a CPU training step and traces a full-size step with no memory at all.

Each storage carries a tag: the tracker's current ``tag`` when it appeared (``scope()`` sets it),
``autocast_weight_copies`` for a dtype copy of a registered weight, ``dequant_transient`` for the
output of a dequantize op. ``phase_report`` reconstructs the live set at the phase's peak and
re-labels storages still alive at the phase's end by identity (weights, gradients, optimizer state),
so the measured breakdown lines up with the analytical terms.

A ``cap_bytes`` turns the tracker into a memory limit: the first allocation that takes the live
total above it raises ``torch.OutOfMemoryError`` (how CPU tests simulate a GPU running out).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

DEFAULT_TAG = "activations"


class _Rec:
    __slots__ = ("key", "nbytes", "tag", "born", "died", "ref")

    def __init__(self, key: int, nbytes: int, tag: str, born: int) -> None:
        self.key, self.nbytes, self.tag, self.born, self.died = key, nbytes, tag, born, None
        self.ref: Any = None


@dataclass(frozen=True)
class PhaseReport:
    """One phase of a step: its peak live bytes, what was live at that peak by tag, and the live bytes
    at its end."""

    name: str
    peak_bytes: int
    end_bytes: int
    breakdown: dict[str, int] = field(default_factory=dict)


def _storage(t: torch.Tensor):
    local = getattr(t, "_local_tensor", None)  # a DTensor (FSDP2's sharded parameter): its shard on this rank
    if isinstance(local, torch.Tensor):
        t = local
    try:
        return t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # sparse or opaque tensors hold no plain storage
        return None


class LiveStorageTracker(TorchDispatchMode):
    """Count distinct live storages (bytes) seen under the mode; see the module docstring."""

    def __init__(self, cap_bytes: int | None = None) -> None:
        super().__init__()
        self.cap_bytes = cap_bytes
        self.tag = DEFAULT_TAG
        self.current = 0
        self.peak = 0
        self._peak_seq = 0
        self._seq = 0
        self._live: dict[int, _Rec] = {}
        self._window: list[_Rec] = []
        self._weight_keys: set[int] = set()
        self.labels: dict[int, str] = {}

    # -- bookkeeping ------------------------------------------------------------------------------
    def _freed(self, rec: _Rec) -> None:
        if self._live.get(rec.key) is rec:
            del self._live[rec.key]
            self.current -= rec.nbytes
            self._seq += 1
            rec.died = self._seq

    def _add(self, t: torch.Tensor, tag: str) -> _Rec | None:
        st = _storage(t)
        if st is None:
            return None
        key = id(st)
        rec = self._live.get(key)
        if rec is not None:
            return rec
        n = int(st.nbytes())
        self._seq += 1
        rec = _Rec(key, n, tag, self._seq)
        rec.ref = weakref.ref(st, lambda _r, rec=rec: self._freed(rec))
        self._live[key] = rec
        self._window.append(rec)
        self.current += n
        if self.current > self.peak:
            self.peak = self.current
            self._peak_seq = self._seq
        if self.cap_bytes is not None and self.current > self.cap_bytes:
            raise torch.OutOfMemoryError(
                f"simulated out of memory: {self.current} bytes live exceed the cap of {self.cap_bytes} bytes")
        return rec

    def track(self, tensors: Iterable[torch.Tensor], tag: str, weight: bool = False) -> None:
        """Count tensors that exist already (parameters, buffers, inputs) under ``tag``."""
        for t in tensors:
            if isinstance(t, torch.Tensor):
                rec = self._add(t, tag)
                if rec is not None and weight:
                    self._weight_keys.add(rec.key)

    def label(self, tensors: Iterable[torch.Tensor], tag: str) -> None:
        """Name live storages by identity for the next ``phase_report`` (gradients, optimizer state)."""
        for t in tensors:
            if isinstance(t, torch.Tensor):
                st = _storage(t)
                if st is not None and id(st) in self._live:
                    self.labels[id(st)] = tag

    @contextmanager
    def scope(self, tag: str) -> Iterator[None]:
        old, self.tag = self.tag, tag
        try:
            yield
        finally:
            self.tag = old

    def start_phase(self) -> None:
        """Start a new window: the peak restarts from the live total."""
        self.peak = self.current
        self._peak_seq = self._seq
        self._window = list(self._live.values())

    def phase_report(self, name: str) -> PhaseReport:
        """The peak of the window since ``start_phase`` and the live set at that peak, by tag."""
        at = self._peak_seq
        by_tag: dict[str, int] = {}
        for rec in self._window:
            if rec.born <= at and (rec.died is None or rec.died > at):
                tag = self.labels.get(rec.key, rec.tag) if rec.died is None else rec.tag
                by_tag[tag] = by_tag.get(tag, 0) + rec.nbytes
        return PhaseReport(name, self.peak, self.current, dict(sorted(by_tag.items())))

    def resized(self, t: torch.Tensor, tag: str) -> None:
        """A storage changed size in place (``UntypedStorage.resize_``, which no operator dispatch shows):
        the old allocation dies here and, when the new size is not 0, a new one of the new size is born."""
        st = _storage(t)
        if st is None:
            return
        rec = self._live.get(id(st))
        if rec is not None:
            self._freed(rec)
        if int(st.nbytes()):
            new = self._add(t, tag)
            if new is not None and rec is not None:
                new.ref = weakref.ref(st, lambda _r, rec=new: self._freed(rec))

    @contextmanager
    def tag_calls(self, targets: Iterable[tuple[Any, str]], tag: str) -> Iterator[None]:
        """While the context lasts, run each ``getattr(obj, name)`` of ``targets`` (a module's function or a
        class's method; absent ones are skipped) under ``scope(tag)``: what a library allocates inside it is
        named as the model names it."""
        saved = [(obj, name, getattr(obj, name)) for obj, name in targets if hasattr(obj, name)]

        def scoped(fn):
            def run(*a, **kw):
                with self.scope(tag):
                    return fn(*a, **kw)
            return run

        for obj, name, fn in saved:
            setattr(obj, name, scoped(fn))
        try:
            yield
        finally:
            for obj, name, fn in saved:
                setattr(obj, name, fn)

    @contextmanager
    def follow_resizes(self, targets: Iterable[tuple[Any, str]], tag: str) -> Iterator[None]:
        """While the context lasts, each ``getattr(obj, name)`` of ``targets`` (a function whose first argument
        is a tensor whose storage it resizes in place; absent ones are skipped) is followed by ``resized``: the
        old allocation dies and the new size, if not 0, is born under ``tag``."""
        saved = [(obj, name, getattr(obj, name)) for obj, name in targets if hasattr(obj, name)]

        def following(fn):
            def run(tensor: torch.Tensor, *a, **kw) -> None:
                fn(tensor, *a, **kw)
                self.resized(tensor, tag)
            return run

        for obj, name, fn in saved:
            setattr(obj, name, following(fn))
        try:
            yield
        finally:
            for obj, name, fn in saved:
                setattr(obj, name, fn)

    @contextmanager
    def follow_fsdp2(self, tag: str = "fsdp_gathered") -> Iterator[None]:
        """Follow FSDP2's in-place storage resizes: it frees a unit's unsharded parameters by resizing their
        storage to 0 and re-allocates them the same way before the next all-gather
        (``torch.distributed.fsdp._fully_shard._fsdp_param.free_storage``/``alloc_storage``, imported by name in
        ``_fsdp_param_group`` too). Without this the tracker would keep counting every unit's gathered
        parameters after its reshard."""
        from torch.distributed.fsdp._fully_shard import _fsdp_param, _fsdp_param_group

        resizes = [(m, n) for m in (_fsdp_param, _fsdp_param_group) for n in ("alloc_storage", "free_storage")]
        # what FSDP2's collectives allocate: the all-gather buffers, the reduce-scatter input and output
        gathers = [(_fsdp_param_group, "foreach_all_gather"), (_fsdp_param_group, "foreach_all_gather_copy_out")]
        with self.follow_resizes(resizes, tag), self.tag_calls(gathers, tag), \
                self.tag_calls([(_fsdp_param_group, "foreach_reduce")], "fsdp_reduce"):
            yield

    @contextmanager
    def follow_fsdp1(self, tag: str = "fsdp_gathered") -> Iterator[None]:
        """Follow FSDP1's in-place storage resizes: a unit's padded unsharded flat parameter (and its
        low-precision shard under mixed precision) is allocated by resizing its storage before the
        all-gather and freed by resizing it to 0 after use (``torch.distributed.fsdp._flat_param``'s
        ``_alloc_storage``/``_free_storage``). The unshard is tagged as gathered, the gradient reduction
        (``_runtime_utils._reduce_grad``: the padded unsharded gradient, the reduce-scatter output) as
        ``fsdp_reduce``."""
        from torch.distributed.fsdp import _flat_param, _runtime_utils

        resizes = [(_flat_param, "_alloc_storage"), (_flat_param, "_free_storage")]
        gathers = [(_flat_param.FlatParamHandle, "unshard"), (_flat_param.FlatParamHandle, "pre_unshard")]
        with self.follow_resizes(resizes, tag), self.tag_calls(gathers, tag), \
                self.tag_calls([(_runtime_utils, "_reduce_grad")], "fsdp_reduce"):
            yield

    # -- the mode ---------------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tag = self.tag
        name = getattr(func, "__name__", "")
        if "dequantize" in str(func):
            tag = "dequant_transient"
        elif name.startswith("_to_copy") and args and isinstance(args[0], torch.Tensor):
            st = _storage(args[0])
            if st is not None and id(st) in self._weight_keys:
                tag = "autocast_weight_copies"
        flat, _ = tree_flatten(out)
        for t in flat:
            if isinstance(t, torch.Tensor):
                self._add(t, tag)
        return out
