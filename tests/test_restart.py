import pytest
import torch

from srsgd_train import SRSGD
from srsgd_train.optim import RestartPlan, RestartSchedule, exponential_periods, linear_periods


def test_table_6_cifar_periods():
    assert linear_periods(30, 2, 4) == [30, 60, 90, 120]       # CIFAR-10 linear
    assert linear_periods(50, 2, 4) == [50, 100, 150, 200]     # CIFAR-100 linear
    assert exponential_periods(40, 1.25, 4) == [40, 50, 63, 78]   # 62.5 rounds up
    assert exponential_periods(45, 1.5, 4) == [45, 68, 101, 152]  # 67.5, 151.875


def imagenet_plan(epochs=90, milestones=(30, 60), periods=(40, 80, 80), steps_per_epoch=3):
    return RestartPlan(periods=periods, milestones=milestones, epochs=epochs,
                       steps_per_epoch=steps_per_epoch, decay_last_to=1)


def test_table_7_imagenet_decays_from_80_to_1_in_last_30_epochs():
    plan = imagenet_plan()
    per_epoch = [plan.period_at(e * plan.steps_per_epoch) for e in range(90)]
    assert per_epoch[:30] == [40] * 30
    assert per_epoch[30:60] == [80] * 30
    last = per_epoch[60:]
    assert last[0] == 80 and last[-1] == 1 and len(last) == 30
    assert all(a >= b for a, b in zip(last, last[1:]))
    assert last[15] == 39  # 80 - 79 * 15 / 29 = 39.14, rounded half up


@pytest.mark.parametrize(
    "epochs,milestones,periods,last_len",
    [(80, (30, 56), (60, 105, 105), 24), (80, (30, 56), (40, 80, 80), 24),
     (75, (30, 51), (40, 80, 80), 24), (60, (30, 46), (40, 80, 80), 14)],
)
def test_table_8_short_imagenet(epochs, milestones, periods, last_len):
    plan = imagenet_plan(epochs, milestones, periods, steps_per_epoch=1)
    last = [plan.period_at(e) for e in range(milestones[-1], epochs)]
    assert len(last) == last_len and last[0] == periods[-1] and last[-1] == 1


def test_schedule_drives_optimizer_exactly_as_planned():
    plan = RestartPlan(periods=(3, 5, 2), milestones=(2, 4), epochs=6, steps_per_epoch=4)
    table = plan.table()
    model = torch.nn.Linear(2, 1)
    opt = SRSGD(model.parameters(), lr=0.01, restart_period=99)
    sched = RestartSchedule(opt, plan)
    for k in range(plan.total_steps):
        assert (opt.iter_count, opt.param_groups[0]["restart_period"]) == (table.iter_count[k], table.period[k])
        assert plan.phase_at(k) == (table.iter_count[k], table.period[k])
        model(torch.ones(1, 2)).sum().backward()
        opt.step()
        opt.zero_grad()
        sched.step()
    # each stage starts with a restart; F=3 gives c = 1,2,3,1,... in stage 0
    assert table.iter_count[:8] == [1, 2, 3, 1, 2, 3, 1, 2]
    assert table.iter_count[8] == 1 and table.period[8] == 5
    assert table.restarts()[:4] == [0, 3, 6, 8]


def test_schedule_state_dict_roundtrip():
    plan = RestartPlan(periods=(3, 5), milestones=(1,), epochs=2, steps_per_epoch=5)
    opt = SRSGD(torch.nn.Linear(2, 1).parameters(), lr=0.01)
    sched = RestartSchedule(opt, plan)
    for _ in range(6):
        sched.step()
    opt2 = SRSGD(torch.nn.Linear(2, 1).parameters(), lr=0.01)
    sched2 = RestartSchedule(opt2, plan)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    assert sched2.applied_steps == 6 and sched2.period == 5
    assert opt2.iter_count == opt.iter_count


def test_plan_rejects_wrong_number_of_periods():
    with pytest.raises(ValueError, match="one restart period per LR stage"):
        RestartPlan(periods=(3,), milestones=(1,), epochs=2, steps_per_epoch=5)
