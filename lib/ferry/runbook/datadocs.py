"""Great Expectations' Data Docs made to render offline, and a check that nothing is left to
fetch.

GE's pages pull Bootstrap, jQuery, Font Awesome, bootstrap-table, Vega... from CDNs and show a
tracking image; offline the index is empty (its table is built by a script from a CDN) and
the result pages lose their styles and status icons. ``make_data_docs_offline`` rewrites the
archived copy: every script and external reference goes, a small stylesheet of our own is
inlined, icon-font status icons become text markers (✓ PASS, ✗ FAIL), and the index's lists
of validation results and suites become static tables built from the site's own pages.
``find_network_references`` lists whatever external reference remains (step 04's gate fails
on any).

HTML goes through BeautifulSoup (html.parser); only CSS text (``<style>``, ``style=``, .css
files) is searched with regular expressions.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from bs4 import BeautifulSoup, Tag, XMLParsedAsHTMLWarning

STYLE_ID = "ferry-data-docs"
HTML_SUFFIXES = (".html", ".htm")
# attributes whose value the browser fetches (or navigates to) by itself or on a click
URL_ATTRIBUTES = (
    "src",
    "href",
    "srcset",
    "data",
    "poster",
    "action",
    "formaction",
    "background",
    "xlink:href",
    "ping",
    "manifest",
)
_EXTERNAL = re.compile(r"^\s*(?:[a-z][a-z0-9+.-]*:)?//|^\s*(?:https?|wss?|ftp):", re.IGNORECASE)
_LOCAL_SCHEMES = re.compile(r"^\s*(?:file|data|blob|about|javascript|mailto):", re.IGNORECASE)
_CSS_IMPORT = re.compile(
    r"""@import\s+(?:url\(\s*(['"]?)(?P<a>.*?)\1\s*\)|(['"])(?P<b>.*?)\3)[^;]*;?""",
    re.IGNORECASE | re.DOTALL,
)
_CSS_URL = re.compile(r"""url\(\s*(['"]?)(?P<u>.*?)\1\s*\)""", re.IGNORECASE | re.DOTALL)
_SCRIPT_URL = re.compile(r"""(?:https?|wss?)://[^\s'"`)<>]+""", re.IGNORECASE)
_META_REFRESH_URL = re.compile(r"url\s*=\s*(\S+)", re.IGNORECASE)

# Font Awesome classes GE uses for a status, and what replaces them: (kind, mark, word)
_ICONS = {
    "fa-check-circle": ("pass", "✓", "PASS"),
    "fa-circle-check": ("pass", "✓", "PASS"),
    "fa-check": ("pass", "✓", "PASS"),
    "fa-times": ("fail", "✗", "FAIL"),
    "fa-times-circle": ("fail", "✗", "FAIL"),
    "fa-xmark": ("fail", "✗", "FAIL"),
    "fa-circle-xmark": ("fail", "✗", "FAIL"),
    "fa-exclamation-triangle": ("warn", "⚠", "WARN"),
    "fa-triangle-exclamation": ("warn", "⚠", "WARN"),
    "fa-question-circle": ("info", "?", ""),
    "fa-circle-question": ("info", "?", ""),
    "fa-info-circle": ("info", "ℹ", ""),
    "fa-circle-info": ("info", "ℹ", ""),
}

# Our own stylesheet (not derived from Bootstrap): enough for headings, tables, the two-column
# layout GE's markup asks for, and the status markers, in light and dark colour schemes.
STYLESHEET = """
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif;
  color: #1d2430; background: #fff; }
a[href] { color: #0b5cad; }
h1, h2, h3, h4, h5, h6 { font-weight: 600; line-height: 1.25; margin: 0.35em 0; }
h4 { font-size: 20px; } h5 { font-size: 17px; } h6, .h6 { font-size: 14px; font-weight: 600; }
p { margin: 0.4em 0; }
.lead { color: #4a5565; }
nav.navbar { display: flex; align-items: center; gap: 16px; padding: 8px 24px;
  border-bottom: 1px solid #d7dce3; height: auto !important; }
.ferry-brand { font-weight: 600; font-size: 17px; }
.container-fluid { padding: 12px 24px; box-sizing: border-box; }
.ge-section .container-fluid, .ge-section.container-fluid { padding: 0; margin-bottom: 18px; }
.row { display: flex; flex-wrap: wrap; }
.col-12 { flex: 0 0 100%; max-width: 100%; }
.col-6 { flex: 0 0 50%; max-width: 50%; }
.col-lg-2, .col-md-2 { flex: 0 0 220px; max-width: 220px; box-sizing: border-box; padding-right: 16px; }
.col-lg-10, .col-md-10 { flex: 1 1 0; min-width: 0; }
@media (max-width: 800px) {
  .col-6, .col-lg-2, .col-md-2, .col-lg-10, .col-md-10 { flex: 0 0 100%; max-width: 100%; }
}
.alert-secondary { background: #eef1f5; border: 1px solid #d7dce3; border-radius: 4px;
  padding: 8px 12px; margin: 6px 0; }
table { border-collapse: collapse; width: 100%; margin: 6px 0; }
th, td { border: 1px solid #d7dce3; padding: 5px 8px; text-align: left; vertical-align: top; }
thead th { background: #eef1f5; font-weight: 600; }
tbody tr:nth-child(even) { background: #f7f8fa; }
td table { width: auto; }
.table-responsive { flex: 1 1 100%; overflow-x: auto; }
.badge { display: inline-block; padding: 0 5px; border-radius: 3px; background: #e3e7ed;
  font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12px; }
code, pre { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12px;
  background: #f3f4f6; padding: 1px 4px; }
.card { border: 1px solid #d7dce3; border-radius: 4px; margin: 8px 0; }
.card-header { background: #eef1f5; padding: 6px 10px; }
.card-body { padding: 6px 10px; }
ul.nav { list-style: none; margin: 0; padding: 0; }
.nav-tabs { display: flex; gap: 18px; border-bottom: 1px solid #d7dce3; padding: 4px 0;
  margin-bottom: 8px; }
.tab-pane { margin-bottom: 20px; }
.breadcrumb { display: flex; gap: 6px; list-style: none; margin: 0; padding: 0; }
.breadcrumb-item + .breadcrumb-item::before { content: "/"; padding-right: 6px; color: #8a94a3; }
.ferry-status { font-weight: 700; white-space: nowrap; }
.ferry-status-pass, .text-success { color: #17743a; }
.ferry-status-fail, .text-danger { color: #b3261e; }
.ferry-status-warn { color: #8a5a00; }
.ferry-status-info { color: #4a5565; }
.ferry-index caption { text-align: left; font-weight: 600; padding: 4px 0; }
@media (prefers-color-scheme: dark) {
  body { color: #e3e7ed; background: #15181d; }
  a[href] { color: #7db4ef; }
  .lead { color: #a9b2bf; }
  nav.navbar, th, td, .card, .alert-secondary, .nav-tabs { border-color: #3a424e; }
  thead th, .alert-secondary, .card-header { background: #242a33; }
  tbody tr:nth-child(even) { background: #1c2027; }
  .badge, code, pre { background: #2d3440; }
  .ferry-status-pass, .text-success { color: #5fd38a; }
  .ferry-status-fail, .text-danger { color: #ff8a80; }
  .ferry-status-warn { color: #f0c060; }
}
"""


@dataclass(frozen=True)
class NetworkReference:
    path: str  # relative to the site
    where: str  # e.g. "<script src>", "<style> url()", "@import"
    url: str

    def __str__(self) -> str:
        return f"{self.path}: {self.where} {self.url}"


def is_external(url: str | None) -> bool:
    """True for an http(s)/ws/ftp URL or a protocol-relative one (``//host/...``)."""
    return bool(url) and not _LOCAL_SCHEMES.match(url) and bool(_EXTERNAL.match(url))


# the check


def find_network_references(site_dir: Path | str) -> list[NetworkReference]:
    """Every external reference left anywhere in the site: HTML attributes, CSS in ``<style>``,
    ``style=`` and .css files, URLs in inline scripts, and SVG files."""
    site = Path(site_dir)
    found: list[NetworkReference] = []
    for path in sorted(p for p in site.rglob("*") if p.is_file()):
        rel = path.relative_to(site).as_posix()
        suffix = path.suffix.lower()
        if suffix in HTML_SUFFIXES or suffix == ".svg":
            soup = _parse(path)
            found += [NetworkReference(rel, where, url) for where, url in _html_references(soup)]
        elif suffix == ".css":
            found += [
                NetworkReference(rel, where, url)
                for where, url in _css_references(path.read_text(errors="replace"), "")
            ]
    return found


def _parse(path: Path) -> BeautifulSoup:
    with warnings.catch_warnings():  # SVG files: read as HTML only to look at attributes
        warnings.simplefilter("ignore", XMLParsedAsHTMLWarning)
        return BeautifulSoup(path.read_text(errors="replace"), "html.parser")


def _html_references(soup: BeautifulSoup):
    for tag in soup.find_all(True):
        for name in URL_ATTRIBUTES:
            for url in _attribute_urls(tag, name):
                if is_external(url):
                    yield f"<{tag.name} {name}>", url
        if tag.get("style"):
            yield from _css_references(tag["style"], f"<{tag.name} style> ")
        if tag.name == "meta" and str(tag.get("http-equiv", "")).lower() == "refresh":
            m = _META_REFRESH_URL.search(str(tag.get("content", "")))
            if m and is_external(m.group(1).strip("'\"")):
                yield "<meta refresh>", m.group(1)
        if tag.name == "style" and tag.string:
            yield from _css_references(tag.string, "<style> ")
        if tag.name == "script" and tag.string:
            for url in _SCRIPT_URL.findall(tag.string):
                yield "<script> text", url


def _attribute_urls(tag: Tag, name: str) -> list[str]:
    value = tag.get(name)
    if value is None:
        return []
    if isinstance(value, list):  # bs4 splits some attributes on whitespace
        value = " ".join(value)
    if name == "srcset":
        return [part.strip().split(" ")[0] for part in value.split(",") if part.strip()]
    if name == "ping":
        return value.split()
    return [value]


def _css_references(css: str, prefix: str):
    for m in _CSS_IMPORT.finditer(css):
        url = m.group("a") if m.group("a") is not None else m.group("b")
        if is_external(url):
            yield f"{prefix}@import", url
    for m in _CSS_URL.finditer(_CSS_IMPORT.sub("", css)):
        if is_external(m.group("u")):
            yield f"{prefix}url()", m.group("u")


# the rewrite


def make_data_docs_offline(site_dir: Path | str) -> list[NetworkReference]:
    """Rewrite the Data Docs under ``site_dir`` in place so they render with no network;
    returns the external references there were. Idempotent."""
    site = Path(site_dir)
    before = find_network_references(site)
    index = site / "index.html"
    results = _validation_results(site)
    suites = _expectation_suites(site)
    for path in sorted(site.rglob("*")):
        suffix = path.suffix.lower()
        if not path.is_file():
            continue
        if suffix in HTML_SUFFIXES:
            soup = _parse(path)
            _offline_page(soup)
            if path == index:
                _static_index(soup, results, suites)
            path.write_text(str(soup))
        elif suffix == ".css":
            text = path.read_text(errors="replace")
            cleaned = clean_css(text)
            if cleaned != text:
                path.write_text(cleaned)
    return before


def clean_css(css: str) -> str:
    """CSS without external ``@import`` rules; external ``url()`` values become ``none``."""

    def drop_import(m: re.Match) -> str:
        url = m.group("a") if m.group("a") is not None else m.group("b")
        return "" if is_external(url) else m.group(0)

    css = _CSS_IMPORT.sub(drop_import, css)
    return _CSS_URL.sub(lambda m: "none" if is_external(m.group("u")) else m.group(0), css)


def _offline_page(soup: BeautifulSoup) -> None:
    # scripts: from CDNs, or inline ones that only drive jQuery/Bootstrap/Vega from there
    for tag in soup.find_all(["script", "noscript", "footer"]):  # footers: newsletter, tutorials
        tag.decompose()
    # controls that only worked through those scripts
    for tag in soup.find_all(id=lambda i: i and i.endswith("-table-toolbar")):
        tag.decompose()
    for tag in soup.find_all(string=re.compile(r"^\s*Validation Filter:\s*$")):
        card = tag.find_parent("div", class_="card")
        if card is not None:
            card.decompose()
    for tag in soup.find_all(["button", "label", "input", "select"]):
        if any(a.lower().startswith("on") for a in tag.attrs):
            tag.decompose()
    for tag in soup.find_all(True):
        if tag.decomposed:
            continue
        for name in [a for a in tag.attrs if a.lower().startswith("on")]:
            del tag[name]
    for tag in soup.find_all("i", class_=lambda c: c and c.startswith("fa")):
        _replace_icon(soup, tag)
    for tag in soup.find_all(True):
        if tag.decomposed:
            continue
        _drop_external(soup, tag)
    _inline_stylesheet(soup)


def _drop_external(soup: BeautifulSoup, tag: Tag) -> None:
    if tag.name == "style" and tag.string:
        tag.string.replace_with(clean_css(tag.string))
    if tag.get("style"):
        tag["style"] = clean_css(tag["style"])
    external = [n for n in URL_ATTRIBUTES if any(is_external(u) for u in _attribute_urls(tag, n))]
    if tag.name == "meta" and str(tag.get("http-equiv", "")).lower() == "refresh":
        tag.decompose()
        return
    if not external:
        return
    if tag.name in ("link", "iframe", "embed", "object", "source", "track", "base"):
        tag.decompose()
    elif tag.name in ("img", "image", "video", "audio", "picture"):
        alt = str(tag.get("alt") or "").strip()  # the logo (GE's tracking image) -> its name
        if alt:
            span = soup.new_tag("span", attrs={"class": "ferry-brand"})
            span.string = alt
            tag.replace_with(span)
        else:
            tag.decompose()
    elif tag.name == "a":  # a link out: keep its text, drop the address
        for name in ("href", "target", "rel", "ping"):
            tag.attrs.pop(name, None)
    else:
        for name in external:
            del tag[name]


def _replace_icon(soup: BeautifulSoup, icon: Tag) -> None:
    classes = icon.get("class") or []
    found = next((_ICONS[c] for c in classes if c in _ICONS), None)
    if found is None:
        icon.decompose()
        return
    kind, mark, word = found
    alone = icon.parent is not None and not icon.parent.get_text(strip=True)
    marker = soup.new_tag(
        "span", attrs={"class": f"ferry-status ferry-status-{kind}", "title": _kind_title(kind)}
    )
    marker.string = f"{mark} {word}" if alone and word else mark
    icon.replace_with(marker)


def _kind_title(kind: str) -> str:
    return {"pass": "passed", "fail": "failed", "warn": "warning"}.get(kind, "note")


def _inline_stylesheet(soup: BeautifulSoup) -> None:
    if soup.find("style", id=STYLE_ID):
        return
    head = soup.head
    if head is None:
        head = soup.new_tag("head")
        (soup.html or soup).insert(0, head)
    style = soup.new_tag("style", attrs={"id": STYLE_ID})
    style.string = STYLESHEET
    head.append(style)


# the index, from the site's own pages


@dataclass(frozen=True)
class _Result:
    suite: str
    run_name: str
    run_time: str
    sort_key: str
    status: str  # PASS, FAIL or ?
    evaluated: str
    successful: str
    href: str  # relative to the site


def _validation_results(site: Path) -> list[_Result]:
    """One row per result page GE wrote: validations/<suite...>/<run>/<time>/<batch>.html."""
    root = site / "validations"
    out = []
    for page in sorted(root.rglob("*.html")) if root.is_dir() else []:
        parts = page.relative_to(root).parts
        if len(parts) < 4:
            continue
        suite, run_name, run_time = ".".join(parts[:-3]), parts[-3], parts[-2]
        soup = _parse(page)
        text = " ".join(soup.get_text(" ").split())
        m = re.search(r"Status:\s*(?:\S+\s+)?(Succeeded|Failed)", text)
        status = {"Succeeded": "PASS", "Failed": "FAIL"}.get(m.group(1)) if m else "?"
        out.append(
            _Result(
                suite=suite,
                run_name=run_name,
                run_time=_readable_time(run_time),
                sort_key=run_time,
                status=status,
                evaluated=_statistic(soup, "Evaluated Expectations"),
                successful=_statistic(soup, "Successful Expectations"),
                href=page.relative_to(site).as_posix(),
            )
        )
    return sorted(out, key=lambda r: r.sort_key, reverse=True)


def _statistic(soup: BeautifulSoup, name: str) -> str:
    for cell in soup.find_all("td"):
        if cell.get_text(strip=True) == name:
            value = cell.find_next_sibling("td")
            return value.get_text(strip=True) if value else ""
    return ""


def _readable_time(stamp: str) -> str:
    for pattern in ("%Y%m%dT%H%M%S.%fZ", "%Y%m%dT%H%M%SZ"):
        try:
            return datetime.strptime(stamp, pattern).strftime("%Y-%m-%d %H:%M:%S UTC")
        except ValueError:
            continue
    return stamp


def _expectation_suites(site: Path) -> list[tuple[str, str]]:
    root = site / "expectations"
    if not root.is_dir():
        return []
    return [
        (".".join(p.relative_to(root).with_suffix("").parts), p.relative_to(site).as_posix())
        for p in sorted(root.rglob("*.html"))
    ]


def _static_index(soup: BeautifulSoup, results: list[_Result], suites) -> None:
    suite_pages = dict(suites)
    rows = []
    for r in results:
        suite_cell = (
            ("a", {"href": suite_pages[r.suite]}, r.suite) if r.suite in suite_pages else r.suite
        )
        kind = {"PASS": "pass", "FAIL": "fail"}.get(r.status, "info")
        mark = {"pass": "✓", "fail": "✗"}.get(kind, "")
        counts = f"{r.successful} of {r.evaluated}" if r.evaluated else ""
        rows.append(
            [
                ("span", {"class": f"ferry-status ferry-status-{kind}"}, f"{mark} {r.status}"),
                ("a", {"href": r.href}, r.run_time),
                r.run_name,
                suite_cell,
                counts,
            ]
        )
    _fill_table(
        soup,
        "ge-index-page-validation-results-table",
        "Validation results",
        ["Status", "Run time", "Run name", "Expectation suite", "Expectations met"],
        rows,
    )
    _fill_table(
        soup,
        "ge-index-page-expectation_suites-table",
        "Expectation suites",
        ["Expectation suite"],
        [[("a", {"href": href}, name)] for name, href in suites],
    )


def _fill_table(soup, css_class: str, caption: str, header: list[str], rows: list[list]) -> None:
    table = soup.find("table", class_=css_class)
    if table is None:
        table = soup.new_tag("table", attrs={"class": css_class})
        (soup.body or soup).append(table)
    table.clear()
    for name in ("data-toggle", "data-search", "data-icon-size"):
        table.attrs.pop(name, None)
    classes = table.get("class") or []
    if "ferry-index" not in classes:
        table["class"] = [*classes, "ferry-index"]
    cap = soup.new_tag("caption")
    cap.string = caption
    table.append(cap)
    thead, tbody = soup.new_tag("thead"), soup.new_tag("tbody")
    tr = soup.new_tag("tr")
    for name in header:
        th = soup.new_tag("th")
        th.string = name
        tr.append(th)
    thead.append(tr)
    for row in rows:
        tr = soup.new_tag("tr")
        for cell in row:
            td = soup.new_tag("td")
            if isinstance(cell, tuple):
                name, attrs, text = cell
                inner = soup.new_tag(name, attrs=attrs)
                inner.string = text
                td.append(inner)
            else:
                td.string = cell
            tr.append(td)
        tbody.append(tr)
    if not rows:
        tr, td = soup.new_tag("tr"), soup.new_tag("td", attrs={"colspan": str(len(header))})
        td.string = "none"
        tr.append(td)
        tbody.append(tr)
    table.append(thead)
    table.append(tbody)
