"""fedsim/app/windowed_grid.py against a fake grid that answers after a delay."""

from __future__ import annotations

from types import SimpleNamespace

from fedsim.app.windowed_grid import WindowedGrid


class FakeGrid:
    """Replies to a pushed message on the second pull after it was pushed."""

    def __init__(self, drop: set[int] = frozenset()) -> None:
        self.in_flight: dict[str, int] = {}
        self.max_in_flight = 0
        self.drop = drop
        self.pulls = 0

    def get_node_ids(self):
        return [1, 2, 3]

    def push_messages(self, messages):
        ids = []
        for m in messages:
            mid = f"m{m}"
            self.in_flight[mid] = self.pulls
            ids.append(mid)
        self.max_in_flight = max(self.max_in_flight, len(self.in_flight))
        return ids

    def pull_messages(self, ids):
        self.pulls += 1
        ready = [i for i in ids if i in self.in_flight and self.pulls - self.in_flight[i] >= 2
                 and int(i[1:]) not in self.drop]
        for i in ready:
            del self.in_flight[i]
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i)) for i in ready]


def test_all_replies_with_bounded_in_flight() -> None:
    fake = FakeGrid()
    grid = WindowedGrid(fake, window=3, pull_interval=0)
    replies = grid.send_and_receive(list(range(10)), timeout=10)
    assert sorted(r.metadata.reply_to_message_id for r in replies) == sorted(f"m{i}" for i in range(10))
    assert fake.max_in_flight == 3
    assert grid.get_node_ids() == [1, 2, 3]  # the rest forwards


def test_timeout_returns_what_arrived() -> None:
    fake = FakeGrid(drop={4})
    replies = WindowedGrid(fake, window=4, pull_interval=0.01).send_and_receive(list(range(6)), timeout=0.3)
    assert sorted(r.metadata.reply_to_message_id for r in replies) == [f"m{i}" for i in (0, 1, 2, 3, 5)]


def test_replies_are_yielded_as_they_arrive_not_after_the_last() -> None:
    """The strategy gets each reply while later ones are still in flight (streaming aggregation)."""
    fake = FakeGrid()
    stream = iter(WindowedGrid(fake, window=2, pull_interval=0).send_and_receive(list(range(8)), timeout=10))
    first = next(stream)
    assert first.metadata.reply_to_message_id in {"m0", "m1"}  # the window's first two
    assert fake.in_flight  # the rest is still out there
    assert len(list(stream)) == 7
