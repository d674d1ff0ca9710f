"""Flat (bucketed) storage for SRSGD: one contiguous parameter, gradient and buffer tensor
per param group and device/dtype, so a step costs a few kernels, not thousands.

At construction each parameter is re-pointed once at a view of its bucket (as apex's flat
optimizers do); every update after that is in place and the buffer never moves, so the
optimizer state stays a set of per-parameter views (a standard, interchangeable
``state_dict``). Gradients are views of a flat gradient; a gradient that autograd put
elsewhere (e.g. someone else's ``zero_grad(set_to_none=True)``) is copied back in.
A parameter whose gradient is ``None`` is stepped with a zero gradient (weight decay and
momentum still apply), unlike the non-flat paths, which skip it.

The update walks the bucket in cache-sized chunks with one small reusable scratch tensor,
so p, g and v travel between memory and the cores once per step (20 bytes per fp32
parameter) without a compiler; ``impl="fused"`` runs the compiled kernel on the bucket.
"""

from __future__ import annotations

from typing import Any

import torch

CHUNK = 1 << 18  # elements per chunk: 1 MiB of fp32, several chunks fit in L2


class _Bucket:
    def __init__(self, params: list[torch.Tensor]) -> None:
        self.params = params
        total = sum(p.numel() for p in params)
        self.flat_param = torch.empty(total, dtype=params[0].dtype, device=params[0].device)
        self.flat_grad = torch.zeros_like(self.flat_param)
        self.flat_buf: torch.Tensor | None = None
        self.scratch = torch.empty(min(CHUNK, total), dtype=self.flat_param.dtype, device=self.flat_param.device)
        self.offsets, start = [], 0
        for p in params:
            self.offsets.append((start, start + p.numel()))
            start += p.numel()
        with torch.no_grad():
            for p, view in zip(params, self.views(self.flat_param)):
                view.copy_(p)
                p.data = view  # one-time re-pointing; all later updates are in place
        self.grad_views = self.views(self.flat_grad)
        for p, g in zip(params, self.grad_views):
            p.grad = g

    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return [flat[a:b].view_as(p) for p, (a, b) in zip(self.params, self.offsets)]

    def gather_grads(self) -> None:
        for p, gview in zip(self.params, self.grad_views):
            grad = p.grad
            if grad is gview:
                continue
            if grad is None:
                gview.zero_()
            elif grad.is_sparse:
                raise RuntimeError("SRSGD does not support sparse gradients; use dense gradients")
            else:
                gview.copy_(grad)
            p.grad = gview


class FlatStorage:
    def __init__(self, param_groups: list[dict[str, Any]]) -> None:
        self._buckets: dict[int, list[_Bucket]] = {}
        for group in param_groups:
            by_key: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
            for p in group["params"]:
                if p.requires_grad:
                    by_key.setdefault((p.device, p.dtype), []).append(p)
            self._buckets[id(group)] = [_Bucket(ps) for ps in by_key.values()]

    def owns(self, group: dict[str, Any]) -> bool:
        return id(group) in self._buckets

    def zero_grad(self) -> None:
        for buckets in self._buckets.values():
            for b in buckets:
                b.flat_grad.zero_()
                for p, g in zip(b.params, b.grad_views):
                    p.grad = g

    def step(self, group: dict[str, Any], state: Any, lr: float, wd: float, mu: float) -> None:
        for b in self._buckets[id(group)]:
            b.gather_grads()
            if b.flat_buf is None:  # v_0 = w_0
                self._set_buffer(b, state, b.flat_param.clone())
            if group["impl"] == "fused":
                from srsgd_train.optim.fused import fused_srsgd_

                fused_srsgd_([b.flat_param], [b.flat_grad], [b.flat_buf], lr=lr, weight_decay=wd, momentum=mu)
            else:
                _chunked_step(b.flat_param, b.flat_grad, b.flat_buf, b.scratch, lr, wd, mu)

    @staticmethod
    def _set_buffer(b: _Bucket, state: Any, flat_buf: torch.Tensor) -> None:
        b.flat_buf = flat_buf
        for p, view in zip(b.params, b.views(flat_buf)):
            state[p]["momentum_buffer"] = view  # per-param views: standard state_dict

    def adopt_loaded_buffers(self, param_groups: list[dict[str, Any]], state: Any) -> None:
        for group in param_groups:
            for b in self._buckets.get(id(group), []):
                if not all("momentum_buffer" in state[p] for p in b.params):
                    b.flat_buf = None
                    continue
                flat = torch.empty_like(b.flat_param)
                for p, view in zip(b.params, b.views(flat)):
                    view.copy_(state[p]["momentum_buffer"])
                self._set_buffer(b, state, flat)


def _chunked_step(p: torch.Tensor, g: torch.Tensor, v: torch.Tensor, scratch: torch.Tensor,
                  lr: float, wd: float, mu: float) -> None:
    """The SRSGD update over cache-sized chunks; ``v`` is updated in place."""
    for start in range(0, p.numel(), CHUNK):
        pc, gc, vc = p[start:start + CHUNK], g[start:start + CHUNK], v[start:start + CHUNK]
        d = scratch[: pc.numel()]
        torch.add(gc, pc, alpha=wd, out=d)      # d = g + wd * p
        pc.add_(d, alpha=-lr)                   # p = v_new
        d.copy_(pc)                             # d = v_new
        pc.lerp_(vc, -mu)                       # p = v_new + mu * (v_new - v_old)
        vc.copy_(d)                             # v = v_new
