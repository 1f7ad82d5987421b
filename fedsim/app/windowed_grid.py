"""A Grid that keeps at most ``window`` messages in flight and yields replies as they come.

Flower's simulation engine feeds its Ray actors from a thread that, every
0.1 s, asks the in-memory LinkState for each node's pending messages, and each
ask scans every stored message: O(nodes x messages in flight) per sweep, under
a lock, holding the GIL. With 100 clients all sampled this thread used most of
the server process's CPU (py-spy), slowing the 2 actors on a 2-core machine;
with 1000 clients it dominated the round.

Only the Ray actors do work, a few at a time, so pushing every message at once
gains nothing. This wrapper pushes ``window`` messages and pushes the next as
soon as a reply is pulled (a sliding window), which makes the scan small.
Replies are the same messages as with Flower's ``send_and_receive``, yielded as
they are pulled rather than returned as a list once all have arrived: the
strategy folds each into running sums and lets it go (strategies/fold.py), so
the server holds about ``window`` replies, not the round's. The strategy folds
them in partition order, so results do not change. Deployed (real SuperNodes),
the window is unbounded (``window=None``): every client gets its message at
once, and replies still stream to the strategy as they are pulled.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid


class WindowedGrid:
    """Duck-typed wrapper: ``send_and_receive`` is windowed, the rest forwards."""

    def __init__(self, grid: Grid, window: int | None, pull_interval: float = 0.02) -> None:
        """window: messages in flight at most (None: all at once)."""
        self._grid, self.window, self.pull_interval = grid, window, pull_interval

    def __getattr__(self, name: str):
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None
                         ) -> Iterable[Message]:
        pending = list(messages)
        end = time.monotonic() + (timeout if timeout is not None else float("inf"))
        in_flight: set[str] = set()

        def refill() -> None:
            nonlocal pending
            room = len(pending) if self.window is None else self.window - len(in_flight)
            if room > 0 and pending:
                batch, pending = pending[:room], pending[room:]
                in_flight.update(self._grid.push_messages(batch))

        refill()
        while (pending or in_flight) and time.monotonic() < end:
            got = list(self._grid.pull_messages(in_flight)) if in_flight else []
            in_flight.difference_update(m.metadata.reply_to_message_id for m in got)
            refill()  # before the strategy works on what came: the actors stay busy
            if not got:
                time.sleep(self.pull_interval)
            yield from got  # one at a time: the strategy folds each and lets it go


def in_simulation(grid: Grid) -> bool:
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    return isinstance(grid, InMemoryGrid)
