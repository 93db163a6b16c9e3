"""Reading Prometheus metrics the way Prometheus does: scrape the text format over HTTP
(or take it from the in-process registry) and parse it with prometheus_client's parser."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

Key = tuple[str, frozenset[tuple[str, str]]]


@dataclass(frozen=True)
class Scrape:
    samples: Mapping[Key, float]

    @classmethod
    def parse(cls, text: str) -> Scrape:
        return cls(
            {
                (sample.name, frozenset(sample.labels.items())): sample.value
                for family in text_string_to_metric_families(text)
                for sample in family.samples
            }
        )

    def has(self, name: str, **labels: str) -> bool:
        return (name, frozenset(labels.items())) in self.samples

    def value(self, name: str, **labels: str) -> float:
        """The sample with exactly these labels (0 if absent: a counter not yet touched)."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def by(self, name: str, label: str, **where: str) -> dict[str, float]:
        """Samples of `name` whose labels include `where`, keyed by the value of `label`."""
        found: dict[str, float] = {}
        for (sample, labels), value in self.samples.items():
            pairs = dict(labels)
            if sample == name and label in pairs and where.items() <= pairs.items():
                found[pairs[label]] = found.get(pairs[label], 0.0) + value
        return found

    def minus(self, earlier: Scrape) -> Scrape:
        """What changed since `earlier` (counters of one process)."""
        return Scrape(
            {key: value - earlier.samples.get(key, 0.0) for key, value in self.samples.items()}
        )


def scrape(url: str) -> Scrape:
    response = httpx.get(url, timeout=10)
    response.raise_for_status()
    assert response.headers["content-type"].startswith("text/plain"), response.headers
    return Scrape.parse(response.text)


def scrape_until(
    url: str,
    done: Callable[[Scrape], bool],
    timeout_s: float = 60.0,
    alive: Callable[[], bool] = lambda: True,
) -> Scrape:
    """Scrape until `done` holds (counters follow the outputs by a few milliseconds, the
    lag gauge by a few seconds); the last scrape either way, for the caller's asserts."""
    deadline = time.monotonic() + timeout_s
    last = Scrape({})
    while time.monotonic() < deadline:
        assert alive(), f"the process behind {url} exited"
        try:
            last = scrape(url)
        except httpx.TransportError:
            pass  # not listening yet
        else:
            if done(last):
                return last
        time.sleep(0.25)
    return last


def free_port_pair() -> int:
    """A port P such that P and P + 1 are both free now (a worker and its sink child)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        if port >= 65535:
            continue
        with socket.socket() as first, socket.socket() as second:
            try:
                first.bind(("0.0.0.0", port))
                second.bind(("0.0.0.0", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two free consecutive ports")
