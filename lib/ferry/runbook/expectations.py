"""Great Expectations 1.x suites over the validation evidence, with Data Docs on disk.

Two suites: ``partitions`` over the validation core's per-partition table, and ``rows`` over
a row-level sample (one row per sampled stream entry, compared with Kafka's record).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ferry.runbook.datadocs import make_data_docs_offline

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

ZERO_COLUMNS = ("missing", "duplicates", "out_of_order", "mismatched", "extra", "unexplained_gaps")
ROW_FIELDS = ("partition", "offset", "timestamp_ms")


@dataclass(frozen=True)
class SuiteOutcome:
    suite: str
    success: bool
    failures: tuple[str, ...]  # one line per failed expectation, naming partitions or offsets


def _partition_expectations(gx) -> list:
    e = gx.expectations
    out = [e.ExpectColumnPairValuesToBeEqual(column_A="kafka_count", column_B="redis_count")]
    out += [
        e.ExpectColumnValuesToBeBetween(column=c, min_value=0, max_value=0) for c in ZERO_COLUMNS
    ]
    out.append(e.ExpectColumnValuesToBeUnique(column="partition"))
    return out


def _row_expectations(gx) -> list:
    e = gx.expectations
    out = [e.ExpectColumnValuesToNotBeNull(column=c) for c in ROW_FIELDS]
    out.append(e.ExpectColumnValuesToBeInSet(column="digest_match", value_set=[True]))
    out.append(e.ExpectCompoundColumnsToBeUnique(column_list=["partition", "offset"]))
    out.append(e.ExpectColumnValuesToBeInSet(column="in_stream", value_set=[True]))
    return out


def run_suites(partitions: pd.DataFrame, rows: pd.DataFrame, folder: Path) -> list[SuiteOutcome]:
    """Validate both tables; Data Docs land in ``folder/data-docs``. The GX project itself is
    a scratch folder beside it, removed afterwards (the docs are the evidence)."""
    import great_expectations as gx

    project = folder / ".gx-project"
    shutil.rmtree(project, ignore_errors=True)
    context = gx.get_context(mode="file", project_root_dir=str(project))
    # no "Calculating Metrics" bars: on stderr they read as error boxes in the archived step
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas(name="ferry")
    outcomes = []
    for name, frame, expectations, index in (
        ("partitions", partitions, _partition_expectations(gx), ["partition"]),
        ("rows", rows, _row_expectations(gx), ["partition", "offset"]),
    ):
        asset = source.add_dataframe_asset(name=name)
        batch = asset.add_batch_definition_whole_dataframe(f"{name}-all")
        suite = context.suites.add(gx.ExpectationSuite(name=f"ferry-{name}"))
        for expectation in expectations:
            suite.add_expectation(expectation)
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"ferry-{name}", data=batch, suite=suite)
        )
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name=f"ferry-{name}",
                validation_definitions=[definition],
                actions=[gx.checkpoint.UpdateDataDocsAction(name="data-docs")],
                result_format={"result_format": "COMPLETE", "unexpected_index_column_names": index},
            )
        )
        result = checkpoint.run(batch_parameters={"dataframe": frame})
        failures = []
        for run in result.run_results.values():
            for r in run.results:
                if not r.success:
                    failures.append(_describe_failure(r, index))
        outcomes.append(SuiteOutcome(name, bool(result.success), tuple(failures)))
    docs = project / "gx" / "uncommitted" / "data_docs" / "local_site"
    target = folder / "data-docs"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(docs, target)
    make_data_docs_offline(target)  # no CDN, no tracking image: the archive renders offline
    shutil.rmtree(project, ignore_errors=True)
    return outcomes


def _describe_failure(result, index: list[str]) -> str:
    config = result.expectation_config
    kwargs = {
        k: v
        for k, v in config.kwargs.items()
        if k in ("column", "column_A", "column_B", "column_list")
    }
    where = ", ".join(f"{k}={v}" for k, v in kwargs.items())
    bad = result.result.get("unexpected_index_list") or []
    rows = []
    for item in bad[:5]:
        if isinstance(item, dict):
            rows.append(" ".join(f"{k} {item[k]}" for k in index if k in item))
    found = f" at {'; '.join(rows)}" if rows else ""
    more = f" (+{len(bad) - 5} more)" if len(bad) > 5 else ""
    return f"{config.type}({where}) failed{found}{more}"
