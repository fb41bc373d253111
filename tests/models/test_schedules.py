from __future__ import annotations

import math

import pytest

from search.hparams import TrialConfig
from search.models.schedules import SCHEDULES, learning_rate_schedule, step, warmup_exp
from search.results.plots import schedule as plot_schedule


def report_lrfn(epoch: int, replicas: int = 1) -> float:
    """The report's Level 1 function, verbatim apart from the replicas argument."""
    LR_START = 0.00001
    LR_MAX = 0.00005 * replicas
    LR_MIN = 0.00001
    LR_RAMPUP_EPOCHS = 5
    LR_SUSTAIN_EPOCHS = 0
    LR_EXP_DECAY = 0.8
    if epoch < LR_RAMPUP_EPOCHS:
        lr = (LR_MAX - LR_START) / LR_RAMPUP_EPOCHS * epoch + LR_START
    elif epoch < LR_RAMPUP_EPOCHS + LR_SUSTAIN_EPOCHS:
        lr = LR_MAX
    else:
        lr = (LR_MAX - LR_MIN) * LR_EXP_DECAY ** (epoch - LR_RAMPUP_EPOCHS - LR_SUSTAIN_EPOCHS) + LR_MIN
    return lr


def config(schedule: str, lr: float) -> TrialConfig:
    return TrialConfig(schedule=schedule, learning_rate=lr)


@pytest.mark.parametrize("replicas", [1, 8])
def test_warmup_exp_matches_report(replicas):
    fn = learning_rate_schedule(config("warmup_exp", 5e-5), epochs=25, replicas=replicas)
    for epoch in range(25):
        assert fn(epoch) == pytest.approx(report_lrfn(epoch, replicas), rel=1e-12)


def test_warmup_exp_hand_values():
    fn = learning_rate_schedule(config("warmup_exp", 5e-5), epochs=25)
    assert fn(0) == pytest.approx(1e-5)
    assert fn(1) == pytest.approx(1.8e-5)  # 1e-5 + 4e-5 / 5
    assert fn(5) == pytest.approx(5e-5)  # (5e-5 - 1e-5) * 0.8**0 + 1e-5
    assert fn(6) == pytest.approx(4.2e-5)  # 4e-5 * 0.8 + 1e-5
    assert fn(24) == pytest.approx(4e-5 * 0.8**19 + 1e-5)


def test_warmup_exp_scales_peak_with_replicas():
    fn = learning_rate_schedule(config("warmup_exp", 5e-5), epochs=25, replicas=8)
    assert fn(0) == pytest.approx(1e-5)
    assert fn(5) == pytest.approx(4e-4)
    assert max(fn(e) for e in range(25)) == pytest.approx(4e-4)


def test_warmup_constants_are_keywords():
    fn = learning_rate_schedule(config("warmup_exp", 1e-3), epochs=10, rampup=2, sustain=2, decay=0.5)
    assert [fn(e) for e in (0, 2, 3, 4, 5)] == pytest.approx([1e-5, 1e-3, 1e-3, 1e-3, 0.5 * (1e-3 - 1e-5) + 1e-5])
    assert warmup_exp(1e-3, rampup=2)(1) == pytest.approx((1e-3 - 1e-5) / 2 + 1e-5)


def test_step_matches_report_level3():
    fn = learning_rate_schedule(config("step", 5e-4), epochs=50)
    expected = [5e-4] * 4 + [2e-4] * 4 + [1e-4] * 4 + [5e-5] * 4 + [2e-5] * 4 + [1e-5] * 30
    assert [fn(e) for e in range(50)] == pytest.approx(expected, rel=1e-9)


def test_step_is_relative_to_learning_rate_and_ignores_replicas():
    fn = learning_rate_schedule(config("step", 1e-3), epochs=30, replicas=8)
    assert [fn(e) for e in (0, 4, 8, 12, 16, 20, 29)] == pytest.approx([1e-3, 4e-4, 2e-4, 1e-4, 4e-5, 2e-5, 2e-5])


def test_step_rejects_inconsistent_factors():
    from search.errors import SearchError

    with pytest.raises(SearchError, match="one factor more"):
        step(1e-3, boundaries=(2, 4), factors=(1.0, 0.5))


def test_constant():
    fn = learning_rate_schedule(config("constant", 3e-4), epochs=10, replicas=8)
    assert {fn(e) for e in range(10)} == {3e-4}


def test_cosine_endpoints_and_floor():
    fn = learning_rate_schedule(config("cosine", 1e-3), epochs=10)
    assert fn(0) == pytest.approx(1e-3)
    assert fn(5) == pytest.approx(5e-4)
    assert fn(10) == pytest.approx(0.0, abs=1e-15)
    assert all(fn(e) >= fn(e + 1) for e in range(10))
    floored = learning_rate_schedule(config("cosine", 1e-3), epochs=10, floor=1e-5)
    assert floored(0) == pytest.approx(1e-3)
    assert floored(10) == pytest.approx(1e-5)
    assert floored(3) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * 0.3)))


def test_schedule_accepts_current_rate_like_keras_scheduler():
    import keras

    fn = learning_rate_schedule(config("step", 5e-4), epochs=10)
    assert fn(5, 0.123) == pytest.approx(2e-4)
    callback = keras.callbacks.LearningRateScheduler(fn)
    assert callback.schedule is fn


def test_plot_writes_png(tmp_path):
    fn = learning_rate_schedule(config("warmup_exp", 5e-5), epochs=25)
    out = plot_schedule(fn, 25, tmp_path / "plots" / "lr.png", title="warmup")
    assert out == tmp_path / "plots" / "lr.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 1000


def test_every_schedule_in_the_registry_makes_a_positive_rate_for_each_epoch():
    for name in SCHEDULES:
        fn = learning_rate_schedule(config(name, 1e-3), epochs=12, replicas=2)
        rates = [fn(epoch) for epoch in range(12)]
        assert all(rate > 0 for rate in rates[:-1]), name
        assert SCHEDULES[name].description


def test_an_unknown_schedule_names_the_registry():
    from search.errors import SearchError

    with pytest.raises(SearchError, match="Did you mean 'cosine'"):
        learning_rate_schedule(_Config("cosin"), epochs=3)


class _Config:
    """A config that skips TrialConfig's own check, to reach the schedule's."""

    def __init__(self, schedule: str):
        self.schedule, self.learning_rate = schedule, 1e-3
