"""Altair charts for the runbook's evidence (rendered as SVG by the notebooks)."""

from __future__ import annotations

import altair as alt
import pandas as pd


def throughput_chart(progress: pd.DataFrame) -> alt.Chart:
    """``progress`` has columns seconds, records (cumulative): records/s over the run."""
    frame = progress.sort_values("seconds").copy()
    frame["msg_per_s"] = frame["records"].diff() / frame["seconds"].diff()
    frame = frame.dropna()
    return (
        alt.Chart(frame, title="Backfill throughput")
        .mark_line(point=True)
        .encode(
            x=alt.X("seconds:Q", title="seconds since start"),
            y=alt.Y("msg_per_s:Q", title="records/s"),
        )
        .properties(width=560, height=220)
    )


def partition_counts_chart(partitions: pd.DataFrame) -> alt.Chart:
    """Kafka vs Redis record counts per partition."""
    long = partitions.melt(
        id_vars=["partition"],
        value_vars=["kafka_count", "redis_count"],
        var_name="side",
        value_name="records",
    )
    return (
        alt.Chart(long, title="Records per partition: Kafka vs Redis")
        .mark_bar()
        .encode(
            x=alt.X("partition:O"),
            xOffset="side:N",
            y=alt.Y("records:Q"),
            color=alt.Color("side:N"),
        )
        .properties(width=560, height=220)
    )


def memory_over_retention_chart(series: list[dict], node_usable_gb: float) -> alt.Chart:
    frame = pd.DataFrame(series)
    line = (
        alt.Chart(frame, title="Memory needed over retention")
        .mark_line(point=True)
        .encode(
            x=alt.X("retention_days:Q", title="retention (days)"),
            y=alt.Y("memory_gb:Q", title="GB"),
        )
    )
    rule = (
        alt.Chart(pd.DataFrame({"gb": [node_usable_gb]}))
        .mark_rule(strokeDash=[4, 4], color="red")
        .encode(y="gb:Q")
    )
    return (line + rule).properties(width=560, height=220)


def shards_over_rate_chart(series: list[dict], measured_rate: float) -> alt.Chart:
    frame = pd.DataFrame(series)
    line = (
        alt.Chart(frame, title="Shards needed vs event rate")
        .mark_line(point=True, interpolate="step-after")
        .encode(
            x=alt.X("event_rate:Q", title="events/s", scale=alt.Scale(type="log")),
            y=alt.Y("shards:Q"),
        )
    )
    rule = (
        alt.Chart(pd.DataFrame({"rate": [max(measured_rate, 1)]}))
        .mark_rule(color="red")
        .encode(x="rate:Q")
    )
    return (line + rule).properties(width=560, height=220)


def memory_before_after_chart(before: int, after: int) -> alt.Chart:
    frame = pd.DataFrame({"when": ["before trim", "after trim"], "mb": [before / 1e6, after / 1e6]})
    return (
        alt.Chart(frame, title="Stream memory (MEMORY USAGE)")
        .mark_bar()
        .encode(x=alt.X("when:N", sort=None), y=alt.Y("mb:Q", title="MB"))
        .properties(width=300, height=220)
    )


def lag_chart(samples: list[dict], title: str) -> alt.Chart:
    """``samples``: {t, lag} dicts; the mirror's lag (records) over a window."""
    frame = pd.DataFrame(samples, columns=["t", "lag"])
    return (
        alt.Chart(frame, title=title)
        .mark_line(point=True)
        .encode(
            x=alt.X("t:Q", title="seconds into the window"),
            y=alt.Y("lag:Q", title="records behind Kafka"),
        )
        .properties(width=560, height=200)
    )


def pause_chart(pause_ms: float, writers: dict[str, float], bound_ms: float) -> alt.Chart:
    """The cutover's pause (coordinator) and the draining each writer saw, against the bound."""
    frame = pd.DataFrame(
        [{"who": "cutover (coordinator)", "ms": pause_ms}]
        + [{"who": f"writer {w}", "ms": ms} for w, ms in sorted(writers.items())]
    )
    bars = (
        alt.Chart(frame, title=f"Cutover pause against the {bound_ms:.0f} ms bound")
        .mark_bar()
        .encode(x=alt.X("ms:Q", title="milliseconds"), y=alt.Y("who:N", title=None))
    )
    rule = alt.Chart(pd.DataFrame({"ms": [bound_ms]})).mark_rule(color="red").encode(x="ms:Q")
    return (bars + rule).properties(width=560, height=40 + 24 * len(frame))
