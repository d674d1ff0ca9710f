"""Single-pass SRSGD: one compiled kernel per tensor that reads p, g, v once and writes
p, v once. lr, wd and mu are passed as 0-d tensors so a new value does not recompile, and
shapes are dynamic so one graph serves every tensor size."""

from __future__ import annotations

import functools

import torch


def _srsgd_kernel(p, g, v, lr, wd, mu):
    v_new = p - lr * (g + wd * p)
    p.copy_(v_new + mu * (v_new - v))
    v.copy_(v_new)


@functools.cache
def _compiled():
    return torch.compile(_srsgd_kernel, dynamic=True, fullgraph=True)


def fused_srsgd_(params, grads, bufs, *, lr: float, weight_decay: float, momentum: float) -> None:
    kernel = _compiled()
    scalars: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
    for p, g, v in zip(params, grads, bufs):
        key = (p.device, p.dtype)
        if key not in scalars:  # one small host-to-device copy per device/dtype per step
            scalars[key] = torch.tensor([lr, weight_decay, momentum], dtype=p.dtype).to(p.device)
        lr_t, wd_t, mu_t = scalars[key].unbind()
        kernel(p, g, v, lr_t, wd_t, mu_t)
