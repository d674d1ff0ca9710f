"""Single-pass SRSGD: one compiled program per (param group, device, dtype) that reads p,
g, v once and writes p, v once per element (20 bytes per fp32 parameter), with the loop
over tensors unrolled at compile time so there is no per-tensor launch overhead.

lr, wd and mu are 0-d tensors, so a new value does not recompile. Shapes are static: the
first step of each group compiles (tens of seconds on a CPU for a ResNet-50; cached on
disk by inductor afterwards). For thousands of tensors, combine with ``flat=True``, which
hands this kernel one tensor per bucket.
"""

from __future__ import annotations

import functools

import torch


def _srsgd_kernel(ps, gs, vs, lr, wd, mu):
    for p, g, v in zip(ps, gs, vs):
        v_new = p - lr * (g + wd * p)
        p.copy_(v_new + mu * (v_new - v))
        v.copy_(v_new)


@functools.cache
def _compiled():
    return torch.compile(_srsgd_kernel, dynamic=False)


MAX_TENSORS = 512  # compile time grows with the unrolled loop: beyond this, use flat=True


def fused_srsgd_(params, grads, bufs, *, lr: float, weight_decay: float, momentum: float) -> bool:
    """Returns False (doing nothing) for a bucket too large to compile in reasonable time."""
    from torch.utils._foreach_utils import _group_tensors_by_device_and_dtype

    grouped = _group_tensors_by_device_and_dtype([params, grads, bufs])
    if any(len(ps) > MAX_TENSORS for (ps, _, _), _ in grouped.values()):
        _warn_too_many()
        return False
    kernel = _compiled()
    for (device, dtype), ((ps, gs, vs), _) in grouped.items():
        # one small host-to-device copy per device/dtype per step
        scalars = torch.tensor([lr, weight_decay, momentum], dtype=dtype).to(device)
        kernel(ps, gs, vs, scalars[0], scalars[1], scalars[2])
    return True


@functools.cache
def _warn_too_many() -> None:
    import warnings

    warnings.warn(
        f"SRSGD impl='fused' got more than {MAX_TENSORS} tensors in one param group; compiling that "
        "would take minutes, so the unfused path is used. Pass flat=True for a single-pass step.",
        stacklevel=4,
    )
