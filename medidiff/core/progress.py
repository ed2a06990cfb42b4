"""Progress events and the one helper that drives a task generator to its result.

Every long task is written once as a generator that yields ``Progress`` and returns
its result (see ARCHITECTURE.md). Plain API functions call :func:`run_to_end`; the
CLI passes ``show=True`` for a tqdm bar; the napari plugin iterates the generator in a
worker and cancels by closing it.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")

_BAR_DELAY_S = 0.5

TaskGenerator = Generator["Progress", None, T]


@dataclass(frozen=True)
class Progress:
    """One step of a long task.

    ``step`` counts completed units of work out of ``total``; ``preview`` is an optional
    small array (e.g. the current sample) a viewer may show.
    """

    step: int
    total: int
    message: str = ""
    preview: np.ndarray | None = None
    values: dict[str, float] | None = None


def run_to_end(
    gen: Generator[Progress, None, T],
    show: bool = False,
    desc: str | None = None,
    callback: Callable[[Progress], Any] | None = None,
) -> T:
    """Run a task generator to completion and return its result.

    ``show`` draws a tqdm progress bar on stderr; ``callback`` sees every event. Between
    events the thread count follows the machine's load where the policy chose it
    (:class:`medidiff.core.threads.ThreadGovernor`).
    """
    from medidiff.core.threads import ThreadGovernor

    governor = ThreadGovernor()
    bar = None
    try:
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                return stop.value
            if callback is not None:
                callback(event)
            governor()
            if show:
                if bar is None:
                    from tqdm.auto import tqdm

                    # shown after a moment: quick jobs and early refusals stay one clean line
                    bar = tqdm(total=event.total, desc=desc, unit="step", dynamic_ncols=True, delay=_BAR_DELAY_S)
                    started = time.monotonic()
                if bar.total != event.total:
                    bar.total = event.total
                bar.n = event.step
                postfix = dict(event.values or {})
                if event.message:
                    bar.set_description_str(f"{desc or ''} {event.message}".strip(), refresh=False)
                if postfix:
                    bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
                if time.monotonic() - started >= _BAR_DELAY_S:
                    bar.refresh()
    finally:
        if bar is not None:
            bar.close()
        gen.close()


def relay(
    gen: Generator[Any, None, T],
    *,
    step: int = 0,
    total: int | None = None,
    message: str = "",
    counts: list[int] | None = None,
    advance: bool = True,
) -> Generator[Progress, None, T]:
    """Drive an inner generator, yielding one ``Progress`` per inner event; returns its result.

    This is the one way a task re-reports the events of a nested generator (a sampler inside
    denoising, a task inside the demo). With ``total`` given, each inner event advances the
    outer step by one from ``step`` (events of a per-network-call generator become per-call
    progress, so cancel takes effect within one call); without it, the inner events' own
    ``step``/``total`` are passed on with ``message`` prefixed. ``advance=False`` (with
    ``total``) keeps the outer step at ``step`` and passes the inner messages on: one unit of
    outer work (a layer of a batch) whose inner events only say what is happening.
    ``counts``, if given, gets the number of inner events appended (callers that need to know
    how many calls were made).
    """
    n = 0
    try:
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                return stop.value
            n += 1
            inner = getattr(event, "message", "") or ""
            if total is not None and not advance:
                yield Progress(step=step, total=total, message=f"{message} {inner}".strip())
            elif total is not None:
                yield Progress(step=step + n, total=total, message=message)
            elif isinstance(event, Progress):
                text = f"{message} {inner}".strip() if message else inner
                yield Progress(event.step, event.total, text, event.preview, event.values)
            else:
                yield Progress(step=n, total=max(n, 1), message=message)
    finally:
        if counts is not None:
            counts.append(n)
        gen.close()


def plain_twin(steps: Callable[..., Generator[Progress, None, T]], desc: str) -> Callable[..., T]:
    """The plain function of a task: ``steps``' signature plus ``progress: bool = False``.

    ``functools.wraps`` keeps the generator twin's name, docstring and signature, so ``help()``
    and IDEs show the real parameters; ``progress=True`` draws a tqdm bar on stderr.
    """

    @functools.wraps(steps)
    def plain(*args: Any, progress: bool = False, **kwargs: Any) -> T:
        return run_to_end(steps(*args, **kwargs), show=progress, desc=desc)

    sig = inspect.signature(steps)
    params = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    extra = inspect.Parameter("progress", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=bool)
    var_kw = [p for p in sig.parameters.values() if p.kind is inspect.Parameter.VAR_KEYWORD]
    # the generator's return annotation would be wrong here: the plain twin returns the result
    plain.__signature__ = sig.replace(parameters=[*params, extra, *var_kw],
                                      return_annotation=inspect.Signature.empty)  # type: ignore[attr-defined]
    plain.__name__ = steps.__name__.removesuffix("_steps")
    plain.__qualname__ = plain.__name__
    plain.__doc__ = f"Run :func:`{steps.__name__}` to the end and return its result (``progress=True``: a bar).\n\n" + (steps.__doc__ or "")
    return plain
