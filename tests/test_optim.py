"""The poly LR schedule with warm-up, built from torch's schedulers, against the formula it replaces."""

import pytest
import torch

from maskmatch_pl.optim import poly_factor, poly_schedule, schedule_state_after


def two_groups(lr: float = 0.01, lr_multi: float = 10.0) -> torch.optim.SGD:
    params = [torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)]
    return torch.optim.SGD([{"params": [params[0]], "lr": lr}, {"params": [params[1]], "lr": lr * lr_multi}])


def run(schedule: torch.optim.lr_scheduler.LRScheduler, optimizer: torch.optim.Optimizer, steps: int) -> list:
    """The group LRs in force at optimiser steps 0 .. steps-1 (read before each step, as the step uses them)."""
    seen = []
    for _ in range(steps):
        seen.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        schedule.step()
    return seen


@pytest.mark.parametrize(
    ("total", "power", "warmup"),
    [(40, 0.9, 0), (40, 0.9, 1), (40, 0.9, 2), (40, 1.7, 9), (10, 0.9, 10), (10, 0.9, 15), (1, 0.9, 0)],
)
def test_torch_schedulers_give_the_poly_factor_at_every_step(total, power, warmup):
    optimizer = two_groups()
    seen = run(poly_schedule(optimizer, total, power, warmup), optimizer, total + 3)  # also past the end
    for step, lrs in enumerate(seen):
        factor = poly_factor(step, total, power, warmup)
        assert lrs == pytest.approx([0.01 * factor, 0.1 * factor], rel=1e-9, abs=1e-15), f"step {step}"
    assert seen[0][0] == pytest.approx(0.01 / max(warmup, 1))


def test_warmup_then_decay_has_the_expected_shape():
    optimizer = two_groups()
    encoder = [lrs[0] for lrs in run(poly_schedule(optimizer, 100, 0.9, 10), optimizer, 100)]
    assert all(a < b for a, b in zip(encoder[:10], encoder[1:10]))  # rising over the warm-up
    assert all(a > b for a, b in zip(encoder[9:], encoder[10:]))  # then decaying
    assert encoder[9] == pytest.approx(0.01 * (1 - 9 / 100) ** 0.9)


def test_state_after_steps_continues_the_schedule_as_an_unbroken_one():
    total, power, warmup, stop = 30, 0.9, 5, 12
    optimizer = two_groups()
    unbroken = run(poly_schedule(optimizer, total, power, warmup), optimizer, total)

    resumed = two_groups()
    schedule = poly_schedule(resumed, total, power, warmup)  # fresh, as configure_optimizers builds it
    for group, lr in zip(resumed.param_groups, unbroken[stop]):
        group["lr"] = lr  # the optimiser's own state, restored as saved
    state = schedule_state_after(lambda opt: poly_schedule(opt, total, power, warmup), resumed, stop)
    assert [group["lr"] for group in resumed.param_groups] == unbroken[stop]  # the stand-in touched nothing
    schedule.load_state_dict(state)
    later = run(schedule, resumed, total - stop)
    flat = [lr for lrs in later for lr in lrs]
    assert flat == pytest.approx([lr for lrs in unbroken[stop:] for lr in lrs], rel=1e-12)
