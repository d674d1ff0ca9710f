import copy
import io

import pytest
import torch

from srsgd_train.optim.reference import ReferenceSRSGD
from srsgd_train import ARSGD, NASGD, SRSGD
from srsgd_train.optim import momentum_of

IMPLS = ["auto", "single", "foreach", pytest.param("fused", marks=pytest.mark.slow)]


def make_model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4)).to(dtype)


def batches(n, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 8, generator=g).to(dtype), torch.randint(0, 4, (16,), generator=g)) for _ in range(n)]


def train(model, opt, data, step=None):
    losses = []
    for x, y in data:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        (step or opt.step)()
        losses.append(loss.item())
    return losses


def max_rel(a, b):
    return max(((p - q).norm() / q.norm()).item() for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("flat", [False, True])
@pytest.mark.parametrize("wd", [0.0, 5e-4])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_appendix_f_reference_over_500_steps(impl, flat, wd, dtype):
    # float64 isolates the algorithm on a non-convex net (rounding cannot grow to 1e-6);
    # float32 uses a convex model (softmax regression), where fp32 rounding stays small.
    data = batches(500, dtype=dtype)
    if dtype == torch.float64:
        ref_model, model = make_model(dtype=dtype), make_model(dtype=dtype)
    else:
        ref_model, model = (torch.nn.Sequential(torch.nn.Linear(8, 4)) for _ in range(2))
        model.load_state_dict(ref_model.state_dict())
    ref = ReferenceSRSGD(ref_model.parameters(), lr=0.1, weight_decay=wd, restarting_iter=40, paper_decay_sign=True)
    opt = SRSGD(model.parameters(), lr=0.1, weight_decay=wd, restart_period=40, counting="reference", impl=impl, flat=flat)
    train(ref_model, ref, data)
    train(model, opt, data)
    # fp32: each implementation rounds differently (FMA, lerp) at ~1 ulp per step and the
    # momentum carries that along a 500-step random walk (~2e-6); fp64 shows it is only that.
    assert max_rel(model, ref_model) <= (1e-6 if dtype == torch.float64 else 1e-5)
    assert opt.iter_count == ref.param_groups[0]["iter_count"]


def test_paper_counting_restarts_every_f_steps_and_reference_every_f_minus_1():
    model = make_model()
    seen = {"paper": [], "reference": []}
    for counting in seen:
        opt = SRSGD(model.parameters(), lr=0.01, restart_period=4, counting=counting)
        for x, y in batches(9):
            seen[counting].append(opt.iter_count)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    assert seen["paper"] == [1, 2, 3, 4, 1, 2, 3, 4, 1]
    assert seen["reference"] == [1, 2, 3, 1, 2, 3, 1, 2, 3]
    assert momentum_of(1) == 0.0 and momentum_of(4) == pytest.approx(0.5)


def groups_of(model):
    a, b, c = model[0], model[2].weight, model[2].bias
    return [{"params": a.parameters()}, {"params": [b], "lr": 0.05}, {"params": [c], "weight_decay": 0.0}]


def test_three_param_groups_keep_one_phase():
    model = make_model()
    opt = SRSGD(groups_of(model), lr=0.1, weight_decay=1e-4, restart_period=5)
    for i, (x, y) in enumerate(batches(23)):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        counts = {g["iter_count"] for g in opt.param_groups}
        assert counts == {(i + 1) % 5 + 1}


def test_deepspeed_style_per_group_stepping_keeps_one_phase_and_same_result():
    full_model, ds_model = make_model(), make_model()
    full = SRSGD(groups_of(full_model), lr=0.1, restart_period=5)
    ds = SRSGD(groups_of(ds_model), lr=0.1, restart_period=5)

    def per_group_step():  # what DeepSpeed ZeRO's _optimizer_step(group_no) does
        original = ds.param_groups
        for group in original:
            ds.param_groups = [group]
            ds.step()
        ds.param_groups = original

    data = batches(17)
    train(full_model, full, data)
    train(ds_model, ds, data, step=per_group_step)
    assert [g["iter_count"] for g in ds.param_groups] == [g["iter_count"] for g in full.param_groups]
    for p, q in zip(full_model.parameters(), ds_model.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("flat", [False, True])
def test_state_dict_roundtrip_mid_cycle_continues_bitwise(flat):
    data = batches(20)
    model = make_model()
    opt = SRSGD(model.parameters(), lr=0.1, weight_decay=1e-4, restart_period=6, flat=flat)
    train(model, opt, data)  # uninterrupted

    model2 = make_model()
    opt2 = SRSGD(model2.parameters(), lr=0.1, weight_decay=1e-4, restart_period=6, flat=flat)
    train(model2, opt2, data[:9])  # stop at c = 4, mid-cycle
    assert opt2.iter_count == 4
    blob = io.BytesIO()
    torch.save({"model": model2.state_dict(), "optim": opt2.state_dict()}, blob)
    blob.seek(0)
    saved = torch.load(blob, weights_only=True)
    model3 = make_model(seed=123)
    model3.load_state_dict(saved["model"])
    opt3 = SRSGD(model3.parameters(), lr=0.5, restart_period=2, flat=flat)  # overwritten by load
    opt3.load_state_dict(saved["optim"])
    assert opt3.iter_count == 4 and opt3.param_groups[0]["restart_period"] == 6
    train(model3, opt3, data[9:])
    for p, q in zip(model.parameters(), model3.parameters()):
        assert torch.equal(p, q)


def test_flat_and_nonflat_state_dicts_are_interchangeable():
    data = batches(7)
    model = make_model()
    opt = SRSGD(model.parameters(), lr=0.1, restart_period=6, flat=True)
    train(model, opt, data)
    model2 = copy.deepcopy(model)
    opt2 = SRSGD(model2.parameters(), lr=0.1, restart_period=6)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))  # state_dict holds live tensors, as in torch
    more = batches(5, seed=7)
    train(model, opt, more)
    train(model2, opt2, more)
    assert max_rel(model, model2) < 1e-6


def test_step_does_not_modify_grad_and_updates_in_place():
    model = make_model()
    opt = SRSGD(model.parameters(), lr=0.1, weight_decay=0.1, restart_period=3)
    x, y = batches(1)[0]
    torch.nn.functional.cross_entropy(model(x), y).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    ptrs = [p.data_ptr() for p in model.parameters()]
    opt.step()
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters()))
    assert ptrs == [p.data_ptr() for p in model.parameters()]


def test_params_without_grad_and_empty_groups_are_handled():
    model = make_model()
    frozen = torch.nn.Parameter(torch.ones(3))
    opt = SRSGD([{"params": list(model.parameters())}, {"params": [frozen]}, {"params": []}], lr=0.1, restart_period=3)
    x, y = batches(1)[0]
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    assert torch.equal(frozen, torch.ones(3))
    assert [g["iter_count"] for g in opt.param_groups] == [2, 2, 2]


def test_sparse_gradients_get_a_clear_error():
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = SRSGD(emb.parameters(), lr=0.1)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


@pytest.mark.parametrize(
    "kwargs",
    [dict(lr=-0.1), dict(lr=0.0), dict(lr=0.1, restart_period=0), dict(lr=0.1, weight_decay=-1.0),
     dict(lr=0.1, iter_count=0), dict(lr=0.1, counting="nope"), dict(lr=0.1, impl="cuda-magic")],
)
def test_bad_arguments_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        SRSGD(make_model().parameters(), **kwargs)


def test_grad_scaler_skipped_step_does_not_advance_counter():
    model = make_model()
    opt = SRSGD(model.parameters(), lr=0.1, restart_period=5)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
    x, y = batches(1)[0]
    scaler.scale(torch.nn.functional.cross_entropy(model(x), y)).backward()
    scaler.step(opt)
    scaler.update()
    assert opt.iter_count == 2
    opt.zero_grad()
    scaler.scale(torch.nn.functional.cross_entropy(model(x), y) * float("inf")).backward()
    before = [p.clone() for p in model.parameters()]
    scaler.step(opt)  # inf gradients: the scaler skips the step
    scaler.update()
    assert opt.iter_count == 2
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_nasgd_never_restarts_and_arsgd_restarts_when_loss_rises():
    model = make_model()
    nag = NASGD(model.parameters(), lr=0.01)
    train(model, nag, batches(50))
    assert nag.iter_count == 51
    model = make_model()
    ar = ARSGD(model.parameters(), lr=0.01)
    x, y = batches(1)[0]
    for loss in [3.0, 2.0, 1.0]:
        ar.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        ar.step(loss=torch.tensor(loss))
    assert ar.iter_count == 4
    ar.step(loss=5.0)  # the loss rose: this step ran with c = 1
    assert ar.iter_count == 2
    with pytest.raises(ValueError, match="loss"):
        ar.step()


def test_fused_with_thousands_of_tensors_warns_and_uses_the_unfused_path():
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(3)) for _ in range(600)]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    for p, q in zip(a, b):
        p.grad = torch.randn(3)
        q.grad = p.grad.clone()
    fused = SRSGD(a, lr=0.1, weight_decay=1e-4, impl="fused")
    single = SRSGD(b, lr=0.1, weight_decay=1e-4, impl="single")
    with pytest.warns(UserWarning, match="flat=True"):
        fused.step()
    single.step()
    assert all(torch.equal(p, q) for p, q in zip(a, b))
