"""Progress from the first second (issue 16): a task's first event comes before its first network call."""

from __future__ import annotations

import numpy as np

from medidiff.builtin.sample_scans import mr_sample
from medidiff.io import Scan
from medidiff.model_store.registry import resolve_model
from medidiff.tasks.anomaly import detect_anomalies_steps
from medidiff.tasks.denoise import denoise_steps


def _one_slice() -> Scan:
    s = mr_sample()
    return Scan(s.array[3], s.spacing[1:], s.affine, "MR", {})


def _first_event_before_network(steps_factory) -> None:
    model = resolve_model("mr2d")
    calls: list[int] = []
    hook = model.network.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        gen = steps_factory(model)
        first = next(gen)
        assert calls == [], "the network ran before the first progress event"
        assert first.total >= 1 and first.step == 0
        gen.close()
    finally:
        hook.remove()


def test_denoise_reports_before_the_first_network_call():
    _first_event_before_network(lambda m: denoise_steps(m, _one_slice(), device="cpu"))


def test_anomaly_reports_before_the_first_network_call():
    _first_event_before_network(lambda m: detect_anomalies_steps(m, _one_slice(), device="cpu"))
