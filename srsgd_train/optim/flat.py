"""Flat (bucketed) storage for SRSGD: one contiguous parameter, gradient and buffer tensor
per param group and device/dtype, so a step is a handful of kernels, not thousands.

At construction each parameter is re-pointed once at a view of its bucket (the same thing
apex's flat optimizers do); every update after that is in place. Gradients are kept as
views of a flat gradient tensor; a gradient that autograd put elsewhere (e.g. after
``zero_grad(set_to_none=True)`` by someone else) is copied back in before the step.
A parameter whose gradient is ``None`` is stepped with a zero gradient (weight decay and
momentum still apply), unlike the non-flat paths, which skip it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class _Bucket:
    params: list[torch.Tensor]
    flat_param: torch.Tensor
    flat_grad: torch.Tensor
    flat_buf: torch.Tensor | None = None
    offsets: list[tuple[int, int]] = field(default_factory=list)

    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return [flat[a:b].view_as(p) for p, (a, b) in zip(self.params, self.offsets)]


class FlatStorage:
    def __init__(self, param_groups: list[dict[str, Any]]) -> None:
        self._buckets: dict[int, list[_Bucket]] = {}
        for group in param_groups:
            by_key: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
            for p in group["params"]:
                if p.requires_grad:
                    by_key.setdefault((p.device, p.dtype), []).append(p)
            self._buckets[id(group)] = [self._make_bucket(ps) for ps in by_key.values()]

    @staticmethod
    def _make_bucket(params: list[torch.Tensor]) -> _Bucket:
        total = sum(p.numel() for p in params)
        flat_param = torch.empty(total, dtype=params[0].dtype, device=params[0].device)
        flat_grad = torch.zeros_like(flat_param)
        offsets, start = [], 0
        for p in params:
            offsets.append((start, start + p.numel()))
            start += p.numel()
        bucket = _Bucket(params, flat_param, flat_grad, None, offsets)
        with torch.no_grad():
            for p, view, gview in zip(params, bucket.views(flat_param), bucket.views(flat_grad)):
                view.copy_(p)
                p.data = view  # one-time re-pointing; all later updates are in place
                p.grad = gview
        return bucket

    def owns(self, group: dict[str, Any]) -> bool:
        return id(group) in self._buckets

    def zero_grad(self) -> None:
        for buckets in self._buckets.values():
            for b in buckets:
                b.flat_grad.zero_()
                for p, gview in zip(b.params, b.views(b.flat_grad)):
                    p.grad = gview

    def tensors(self, group, state) -> tuple[list, list, list]:
        ps, gs, vs = [], [], []
        for b in self._buckets[id(group)]:
            for p, gview in zip(b.params, b.views(b.flat_grad)):
                if p.grad is None:
                    gview.zero_()
                    p.grad = gview
                elif p.grad.data_ptr() != gview.data_ptr():
                    if p.grad.is_sparse:
                        raise RuntimeError("SRSGD does not support sparse gradients")
                    gview.copy_(p.grad)
                    p.grad = gview
            if b.flat_buf is None:  # v_0 = w_0
                b.flat_buf = b.flat_param.clone()
            ps.append(b.flat_param)
            gs.append(b.flat_grad)
            vs.append(b.flat_buf)
        return ps, gs, vs

    def store_buffers(self, group, state, bufs: list[torch.Tensor]) -> None:
        for b, v in zip(self._buckets[id(group)], bufs):
            b.flat_buf = v
            for p, view in zip(b.params, b.views(v)):
                state[p]["momentum_buffer"] = view  # per-param views: standard state_dict

    def adopt_loaded_buffers(self, param_groups, state) -> None:
        for group in param_groups:
            for b in self._buckets.get(id(group), []):
                if not all("momentum_buffer" in state[p] for p in b.params):
                    b.flat_buf = None
                    continue
                b.flat_buf = torch.empty_like(b.flat_param)
                for p, view in zip(b.params, b.views(b.flat_buf)):
                    view.copy_(state[p]["momentum_buffer"])
                    state[p]["momentum_buffer"] = view
