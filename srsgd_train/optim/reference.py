"""The paper's Appendix F SRSGD, re-implemented faithfully, for comparisons and benchmarks.

Only the API of ``Tensor.add_`` is modernised. Its quirks are kept on purpose: the counter
advances for the first group only, resets once ``iter_count >= restarting_iter`` (period
F-1), ``p.data`` is rebound, and ``.grad`` is modified in place. One switch,
``paper_decay_sign``, flips its ``d_p.add_(-weight_decay, p.data)`` (which *subtracts* the
decay term, growing weights) to the sign eq. (10) and our SRSGD use.
"""

import torch
from torch.optim import Optimizer


class ReferenceSRSGD(Optimizer):
    def __init__(self, params, lr, weight_decay=0.0, iter_count=1, restarting_iter=100, paper_decay_sign=False):
        defaults = dict(lr=lr, weight_decay=weight_decay, iter_count=iter_count, restarting_iter=restarting_iter)
        super().__init__(params, defaults)
        self.decay_sign = 1.0 if paper_decay_sign else -1.0

    def update_iter(self):
        idx = 1
        for group in self.param_groups:
            if idx == 1:
                group["iter_count"] += 1
                if group["iter_count"] >= group["restarting_iter"]:
                    group["iter_count"] = 1
            idx += 1
        return group["iter_count"], group["restarting_iter"]

    def step(self, closure=None):
        for group in self.param_groups:
            weight_decay = group["weight_decay"]
            momentum = (group["iter_count"] - 1.0) / (group["iter_count"] + 2.0)
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad.data
                if weight_decay != 0:
                    d_p.add_(p.data, alpha=self.decay_sign * weight_decay)
                param_state = self.state[p]
                if "momentum_buffer" not in param_state:
                    buf0 = param_state["momentum_buffer"] = torch.clone(p.data).detach()
                else:
                    buf0 = param_state["momentum_buffer"]
                buf1 = p.data - group["lr"] * d_p
                p.data = buf1 + momentum * (buf1 - buf0)
                param_state["momentum_buffer"] = buf1
        self.update_iter()
