"""Progress events and the one helper that drives a task generator to its result.

Every long task is written once as a generator that yields ``Progress`` and returns
its result (see ARCHITECTURE.md). Plain API functions call :func:`run_to_end`; the
CLI passes ``show=True`` for a tqdm bar; the napari plugin iterates the generator in a
worker and cancels by closing it.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")

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

    ``show`` draws a tqdm progress bar on stderr; ``callback`` sees every event.
    """
    bar = None
    try:
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                return stop.value
            if callback is not None:
                callback(event)
            if show:
                if bar is None:
                    from tqdm.auto import tqdm

                    bar = tqdm(total=event.total, desc=desc, unit="step", dynamic_ncols=True)
                if bar.total != event.total:
                    bar.total = event.total
                bar.n = event.step
                postfix = dict(event.values or {})
                if event.message:
                    bar.set_description_str(f"{desc or ''} {event.message}".strip(), refresh=False)
                if postfix:
                    bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
                bar.refresh()
    finally:
        if bar is not None:
            bar.close()
        gen.close()
