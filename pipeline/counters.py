"""Beam counters made once per DoFn instance: `Metrics.counter()` costs microseconds a call, per element adds up."""

from apache_beam.metrics import Metrics


class Counters:
    """The counters of one namespace, created on first use and kept; build it in a DoFn's setup()."""

    def __init__(self, namespace: str):
        self.namespace = namespace
        self._made: dict = {}

    def inc(self, name: str, n: int = 1) -> None:
        if not n:  # batch stages add per batch; a counter that never moved should not appear at 0
            return
        counter = self._made.get(name)
        if counter is None:
            counter = self._made[name] = Metrics.counter(self.namespace, name)
        counter.inc(n)
