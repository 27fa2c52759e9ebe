"""A payment-event traffic generator that writes through ``DualWriter`` at a steady rate."""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable

from ferry.config import StreamConfig

PROGRESS_LOG_S = 30.0
log = logging.getLogger("ferry.services.traffic")


def generate_traffic(
    config: StreamConfig,
    *,
    rate: float,
    seconds: float | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    seed: int = 1,
    linger_ms: int = 50,
) -> dict:
    """Send payment events at ``rate`` msg/s until ``seconds`` pass or ``should_stop()``;
    returns the writer's counts. It sends through every phase the way the phase says.

    ``linger_ms`` batches like a busy application's producer: Tansu's reads of history slow
    down with every batch it holds (after a minute of 1-2 record batches at 300 msg/s a
    reader gets a few hundred records a second), so the generator does not make tiny ones."""
    from ferry.live.delivery import WriterFenced
    from ferry.live.dualwriter import DualWriter, WriterHoldTimeout

    rng = random.Random(seed)
    writer = DualWriter(config, poll_interval_s=0.1, producer_settings={"linger.ms": linger_ms})
    began = time.monotonic()
    sent = refused = 0
    next_line = began + PROGRESS_LOG_S
    log.info("traffic %s: sending at %.0f msg/s (phase %s)", config.name, rate, writer.phase)
    try:
        while not should_stop() and (seconds is None or time.monotonic() - began < seconds):
            event = {
                "id": f"live_{seed}_{sent}",
                "amount_minor": rng.randrange(1, 10**6),
                "currency": "EUR",
            }
            key = f"acct_{rng.randrange(10_000):05d}".encode()
            try:
                writer.send(json.dumps(event).encode(), key=key)
            except (WriterHoldTimeout, WriterFenced) as exc:  # nothing was sent: send it again
                log.warning("traffic %s: %s; sending event %d again", config.name, exc, sent)
                refused += 1
                time.sleep(0.1)  # what an application does before it sends again
                continue
            sent += 1
            if sent % 256 == 0 and time.monotonic() >= next_line:
                next_line = time.monotonic() + PROGRESS_LOG_S
                log.info(
                    "traffic %s: %d sent in %.0fs, phase %s, %d not accepted",
                    config.name,
                    sent,
                    time.monotonic() - began,
                    writer.phase,
                    len(writer.failed),
                )
            ahead = sent / rate - (time.monotonic() - began)
            if ahead > 0:
                time.sleep(ahead)  # pacing to the requested rate
    finally:
        writer.close()
        log.info("traffic %s: stopped after %d sent", config.name, sent)
    holds = sorted(writer.holds_ms)
    return {
        **writer.counts.__dict__,
        "not_accepted": len(writer.failed),
        "refused_and_resent": refused,
        "seconds": round(time.monotonic() - began, 2),
        "held_sends": len(holds),
        "hold_ms": [round(h, 2) for h in holds],
    }
