"""Step 04's Data Docs, as archived, in headless Chromium with the network blocked: the real
Great Expectations run on a tiny table (one partition short of a record), then the index and
every validation result page opened offline."""

import contextlib
import io

import pandas as pd
import pytest

from ferry.runbook.datadocs import find_network_references
from ferry.runbook.expectations import ZERO_COLUMNS, run_suites

from .chromium import OfflineChromium

VALIDATION_ROWS = """(() => {
  const tables = [...document.querySelectorAll('table')].filter(
    t => t.tHead && [...t.tHead.rows[0].cells].some(c => c.innerText.trim() === 'Status'));
  return tables.flatMap(t => [...t.tBodies[0].rows]).map(r => {
    const cell = r.cells[0], box = cell.getBoundingClientRect(), style = getComputedStyle(cell);
    const marker = cell.querySelector('.ferry-status') || cell;
    return {status: cell.innerText.trim(), expectation: r.cells[1].innerText.trim(),
            visible: box.width > 0 && box.height > 0 && style.visibility === 'visible',
            color: getComputedStyle(marker).color};
  });
})()"""

INDEX_ROWS = """(() => [...document.querySelectorAll('tr')]
  .filter(r => r.querySelector('a[href*="validations/"]'))
  .map(r => ({text: r.innerText, href: r.querySelector('a[href*="validations/"]').getAttribute('href'),
              visible: r.getBoundingClientRect().height > 0}))
)()"""

TABLE_STYLE = """(() => {
  const c = document.querySelector('td'), t = c && c.closest('table');
  return !c ? null : {collapse: getComputedStyle(t).borderCollapse, padding: getComputedStyle(c).paddingLeft};
})()"""


@pytest.fixture(scope="module")
def data_docs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("evidence")
    partitions = pd.DataFrame(
        [
            {
                "partition": p,
                "kafka_count": 10,
                "redis_count": 9 if p == 1 else 10,
                **{c: int(c == "missing" and p == 1) for c in ZERO_COLUMNS},
            }
            for p in range(3)
        ]
    )
    rows = pd.DataFrame(
        [
            {
                "partition": 0,
                "offset": i,
                "timestamp_ms": 1_700_000_000_000 + i,
                "entry_id": f"1700000000000-{i}",
                "digest_match": True,
                "in_stream": True,
            }
            for i in range(5)
        ]
    )
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        outcomes = run_suites(partitions, rows, folder)
    # progress bars on stderr read as error boxes in the archived notebook
    assert "Calculating Metrics" not in stderr.getvalue()
    return folder / "data-docs", {o.suite: o for o in outcomes}


def test_data_docs_keep_no_network_reference(data_docs):
    site, _ = data_docs
    assert (site / "index.html").exists()
    assert find_network_references(site) == []


def test_data_docs_render_offline_in_headless_chromium(data_docs, tmp_path):
    site, outcomes = data_docs
    assert not outcomes["partitions"].success and outcomes["rows"].success
    with OfflineChromium(tmp_path) as browser:
        browser.open((site / "index.html").as_uri())
        index = browser.evaluate(INDEX_ROWS)
        style = browser.evaluate(TABLE_STYLE)
        pages = {}
        for row in index:
            browser.open((site / row["href"]).as_uri())
            pages[row["href"]] = browser.evaluate(VALIDATION_ROWS)
        blocked = list(browser.blocked)

    assert blocked == []  # nothing tried to leave the machine

    # the index lists both suites as rows, visible without any script, with their status
    assert all(r["visible"] for r in index), index
    for suite in ("ferry-partitions", "ferry-rows"):
        mine = [r for r in index if f"validations/{suite}/" in r["href"]]
        assert len(mine) == 1, index
        assert suite in mine[0]["text"]
        expected = "PASS" if outcomes[suite.removeprefix("ferry-")].success else "FAIL"
        assert expected in mine[0]["text"], mine[0]

    # our stylesheet applied: tables differ from the browser's defaults
    assert style["collapse"] == "collapse" and style["padding"] != "1px", style

    # every expectation row of every result page shows its status, as text, visibly
    assert len(pages) == 2
    for href, rows in pages.items():
        suite = href.split("/")[1].removeprefix("ferry-")
        assert len(rows) >= 5, (href, rows)
        assert all(r["visible"] and r["expectation"] for r in rows), rows
        statuses = [r["status"] for r in rows]
        assert all(s.endswith(("PASS", "FAIL")) for s in statuses), statuses
        assert sum(s.endswith("FAIL") for s in statuses) == len(outcomes[suite].failures)
    colours = {r["status"][-4:]: r["color"] for rows in pages.values() for r in rows}
    assert colours["PASS"] != colours["FAIL"]  # told apart by colour too
