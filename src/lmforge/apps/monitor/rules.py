"""Surge rules: judge one closed window of one topic, and keep the state between windows.

The state machine is Prometheus' alerting rule, counted in windows instead of seconds: a
window whose metric surges makes the rule *pending*; ``for`` consecutive surging windows make
it *fire* (an alert); the first window that does not surge *resolves* it, after which the rule
stays quiet for ``cooldown`` windows. Windows with fewer than ``min_volume`` documents are not
surges (too few to tell) and do not move the baseline.

Baselines: ``threshold`` compares with a fixed value. ``ewma`` compares with an exponentially
weighted mean and standard deviation of the earlier windows (Roberts 1959; the EW variance as
in West 1979), in deviations (a z-score); surging windows do not update it, so a long surge
is not absorbed into its own baseline. Written here, not taken from a library, because the
whole state must be a small JSON value stored in the same transaction as the window it judged
(river's and ruptures' detectors are pickled objects or batch algorithms).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from lmforge.apps.monitor.config import Rule


@dataclass
class RuleState:
    mean: float = 0.0
    var: float = 0.0
    seen: int = 0  # windows in the baseline
    pending: int = 0  # consecutive surging windows so far
    cooldown: int = 0  # windows left in which the rule may not fire
    alert: int | None = None  # the open alert's id

    def to_json(self) -> dict[str, float | int | None]:
        return asdict(self)


@dataclass(frozen=True)
class Verdict:
    value: float | None  # the metric (None: below min_volume)
    baseline: float | None
    score: float | None  # deviations (ewma) or distance past the threshold, in the bad direction
    surging: bool
    fire: bool  # open an alert now
    resolve: bool  # close the open alert now


def metric_value(rule: Rule, volume: int, negative: int, score_sum: float) -> float:
    if rule.metric == "negative_share":
        return negative / volume
    if rule.metric == "negative_volume":
        return float(negative)
    return score_sum / volume  # mean_score: positive minus negative probability, averaged


def judge(rule: Rule, state: RuleState, volume: int, negative: int, score_sum: float) -> Verdict:
    """Judge one window and update ``state`` in place."""
    value = baseline = score = None
    surging = False
    if volume >= rule.min_volume:
        value = metric_value(rule, volume, negative, score_sum)
        baseline, score, surging = _compare(rule, state, value)
        if not surging:
            _learn(rule, state, value)
    fire = resolve = False
    if state.alert is not None:
        resolve = not surging
        if resolve:
            state.pending, state.cooldown = 0, rule.cooldown
    elif state.cooldown > 0:
        state.cooldown -= 1
        state.pending = 0
    elif surging:
        state.pending += 1
        fire = state.pending >= rule.for_
    else:
        state.pending = 0
    return Verdict(value, baseline, score, surging, fire, resolve)


def _compare(rule: Rule, state: RuleState, value: float) -> tuple[float | None, float, bool]:
    """(baseline, score, surging) for a window's value."""
    if rule.method == "threshold":
        assert rule.threshold is not None  # the config requires it
        score = rule.direction * (value - rule.threshold)
        return rule.threshold, score, score > 0
    if state.seen < rule.warmup:
        return (state.mean if state.seen else None), 0.0, False
    excess = rule.direction * (value - state.mean)
    deviation = math.sqrt(state.var)
    score = excess / deviation if deviation > 0 else (math.inf if excess > 0 else 0.0)
    return state.mean, score, score > rule.z and excess >= rule.min_delta


def _learn(rule: Rule, state: RuleState, value: float) -> None:
    if state.seen == 0:
        state.mean, state.var = value, 0.0
    else:
        delta = value - state.mean
        state.mean += rule.alpha * delta
        state.var = (1 - rule.alpha) * (state.var + rule.alpha * delta * delta)
    state.seen += 1
