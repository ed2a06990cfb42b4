"""The one driver of nested task generators: what each relay mode reports, and the result."""

from __future__ import annotations

from medidiff.core.progress import Progress, relay, run_to_end


def _inner(n: int):
    for i in range(n):
        yield Progress(step=i + 1, total=n, message=f"call {i + 1}")
    return "done"


def _outer(mode: dict):
    result = yield from relay(_inner(3), **mode)
    return result


def _events(mode: dict) -> tuple[list[tuple[int, int, str]], str]:
    seen: list[Progress] = []
    result = run_to_end(_outer(mode), callback=seen.append)
    return [(e.step, e.total, e.message) for e in seen], result


def test_relay_passes_inner_events_on_with_a_prefix():
    events, result = _events({"message": "slice 1"})
    assert result == "done"
    assert events == [(1, 3, "slice 1 call 1"), (2, 3, "slice 1 call 2"), (3, 3, "slice 1 call 3")]


def test_relay_advances_the_outer_step_once_per_inner_event():
    counts: list[int] = []
    events, _ = _events({"step": 10, "total": 20, "message": "tweedie", "counts": counts})
    assert [e[0] for e in events] == [11, 12, 13] and {e[1] for e in events} == {20}
    assert counts == [3]


def test_relay_without_advancing_holds_the_outer_step_and_says_what_happens():
    events, _ = _events({"step": 1, "total": 2, "message": "b.nii.gz (2 of 2)", "advance": False})
    assert events == [(1, 2, "b.nii.gz (2 of 2) call 1"), (1, 2, "b.nii.gz (2 of 2) call 2"),
                      (1, 2, "b.nii.gz (2 of 2) call 3")]
