"""An aten-op census of a call: kernels launched and host synchronisations, counted at the dispatcher.

Used by the whitening benchmark (kernels and syncs per call) and by the test that keeps host syncs out of
the operator. Counting happens in a ``TorchDispatchMode`` (torch.utils._python_dispatch), i.e. below
autograd and Python, so every aten op a call issues is seen once, whatever device it runs on.
"""
from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

#: Ops that read a device value back to the host (or need its value to size an output): each one stalls
#: the host until the device has caught up, and a Python branch on a tensor's value goes through one of them.
SYNC_OPS = frozenset({"_local_scalar_dense", "item", "is_nonzero", "nonzero", "nonzero_static", "equal", "allclose",
                      "masked_select", "unique", "_unique", "_unique2", "unique_consecutive", "unique_dim",
                      "repeat_interleave", "bincount", "histc", "_assert_async", "tolist"})
#: Ops that only allocate memory (no kernel is launched for them on an accelerator).
ALLOC_OPS = frozenset({"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"})


class OpCensus(TorchDispatchMode):
    """Count every aten op; ``kernels`` excludes views (no data touched) and pure allocations.

    A device-to-host copy (``.cpu()``, ``.tolist()`` on an accelerator tensor) is counted as a sync too.
    """

    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()
        self.kernels = 0
        self.syncs: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = run_decomposed(self, func, args, kwargs or {})
        if out is not NotImplemented:  # counted as the ops it decomposes into
            return out
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        self.ops[name] += 1
        if name in SYNC_OPS or _device_to_host(name, args, out):
            self.syncs[name] += 1
        if not func.is_view and name not in ALLOC_OPS:
            self.kernels += 1
        return out

    @property
    def n_syncs(self) -> int:
        return sum(self.syncs.values())


def run_decomposed(mode: TorchDispatchMode, func, args, kwargs):
    """Run a composite op (one with a CompositeImplicitAutograd kernel, e.g. ``matmul``, ``reshape``,
    ``fft_rfft``) as the ops it decomposes into, which then reach ``mode`` one by one; NotImplemented for
    any other op. Outside inference mode autograd decomposes these before a dispatch mode sees them; inside
    (where W runs) the mode sees them whole, so without this a census would count ``matmul`` where ``mm``
    runs, and a ``reshape`` that copies as no copy."""
    if torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), "CompositeImplicitAutograd"):
        with mode:  # the parts go through the mode again
            return func.decompose(*args, **kwargs)
    return NotImplemented


def _device_to_host(name: str, args, out) -> bool:
    if name not in ("_to_copy", "copy_", "to"):
        return False
    src = args[1] if name == "copy_" else args[0]
    dst = out
    return (isinstance(src, torch.Tensor) and isinstance(dst, torch.Tensor) and src.device.type not in ("cpu", "meta")
            and dst.device.type == "cpu")
