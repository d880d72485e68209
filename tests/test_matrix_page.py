"""The matrix people read: `mailflow matrix` over real runs writes an HTML page that shows the reasons in
the page, links counts to the trace files and Allure results, filters by flow and result and folds the
IDs no trace claimed; `--json` prints the same data as matrix.json."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from harness.targets import get

ROOT = Path(__file__).resolve().parents[1]
MAILFLOW = Path(sys.executable).parent / "mailflow"
PASSING = "relay/relay-denied-by-default"
MULTI_ID = "inbound/local-mailbox-on-gateway"
# Postfix's NDR carries no In-Reply-To header: a known deviation (postfix.yaml).
DEVIATING = "inbound/unknown-recipient-ndr"
# A store submission: Postfix has no store, so the trace is skipped there with the reason.
SUBMISSION = "outbound/cheaper-path-down-reroutes"


class Page(HTMLParser):
    """What a reader sees (the text, not the attributes), the links, the form controls and the assets."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text: list[str] = []
        self.links: list[str] = []
        self.selects: dict[str, list[str]] = {}
        self.assets: list[str] = []
        self.scripts = 0
        self._select = ""
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "a" and found.get("href"):
            self.links.append(str(found["href"]))
        if tag == "select":
            self._select = str(found.get("id"))
            self.selects[self._select] = []
        if tag == "option" and self._select:
            self.selects[self._select].append(str(found.get("value")))
        if tag == "script":
            self.scripts += 1
        if found.get("src") or (tag == "link" and found.get("href")):
            self.assets.append(str(found.get("src") or found.get("href")))

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = ""

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    @property
    def words(self) -> str:
        return " ".join(" ".join(self.text).split())


def matrix(
    tmp_path: Path, targets: list[str], traces: list[str]
) -> tuple[subprocess.CompletedProcess[str], Any]:
    run = subprocess.run(
        [
            str(MAILFLOW),
            "matrix",
            "--json",
            "--reports",
            str(tmp_path),
            *(f"--target={t}" for t in targets),
            *(str(ROOT / "traces" / f"{t}.yaml") for t in traces),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "COLUMNS": "200"},
    )
    return run, json.loads(run.stdout) if run.stdout.strip() else None


def test_json_round_trip_and_the_page_on_the_reference_mta(tmp_path: Path) -> None:
    run, data = matrix(tmp_path, ["reference"], [PASSING, MULTI_ID])
    assert run.returncode == 0, run.stderr
    # Standard output is the JSON alone; the table went to standard error.
    assert data == json.loads((tmp_path / "matrix.json").read_text(encoding="utf-8"))
    assert "matrix.html" in run.stderr
    # The terminal table has a row for each claimed ID and one line for the rest.
    rows = [line.split()[0] for line in run.stderr.splitlines() if line.strip()]
    assert "IN-3" in rows and "OUT-8" not in rows
    assert re.search(r"^no trace of this run claims .*\bOUT-8\b", run.stderr, re.M)
    traces = {t["trace"]: t for t in data["traces"]}
    assert set(traces) == {PASSING, MULTI_ID}
    multi = traces[MULTI_ID]
    assert multi["spec"] == ["IN-3", "IN-4", "IN-5", "IN-6a", "IN-6b", "C-CAT"]
    assert multi["results"]["reference"]["outcome"] == "pass"
    assert Path(multi["file"]).resolve() == (ROOT / "traces" / f"{MULTI_ID}.yaml").resolve()
    ids = {i["id"]: i for i in data["ids"]}
    # IN-3 is claimed by both traces: two passes, each trace named.
    in3 = ids["IN-3"]["results"]["reference"]
    assert in3["counts"] == {"pass": 2} and sorted(in3["traces"]["pass"]) == sorted(traces)
    assert ids["OUT-8"]["results"]["reference"]["status"] == "none"
    flows = {f["flow"]: f["counts"]["reference"] for f in data["flows"]}
    assert sum(sum(c.values()) for c in flows.values()) == 2  # each trace once, under its own flow

    html = (tmp_path / "matrix.html").read_text(encoding="utf-8")
    page = Page(html)
    assert page.selects["flow"][0] == "" and {"Inbound", "Relay"} <= set(page.selects["flow"])
    assert page.selects["result"] == ["", "fail", "deviation", "pass", "skipped"]
    assert page.scripts == 1 and page.assets == []  # inline, works offline
    assert not any(link.startswith(("http:", "https:", "//")) for link in page.links)
    # Every link resolves from the page's folder: the trace files, their Allure results and their tests in
    # the Allure report once it is made.
    made = subprocess.run(
        [
            str(ROOT / "scripts" / "allure_report.sh"),
            str(tmp_path / "allure-results"),
            str(tmp_path / "allure-report"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    files = [link for link in page.links if "#" not in link]
    targets = [(tmp_path / unquote(link)).resolve() for link in files]
    assert all(t.exists() for t in targets), [t for t in targets if not t.exists()]
    assert (ROOT / "traces" / f"{MULTI_ID}.yaml").resolve() in targets
    allure = [json.loads(t.read_text(encoding="utf-8")) for t in targets if t.name.endswith("-result.json")]
    assert sorted({a["name"] for a in allure}) == sorted(traces)
    tests = [link.split("#") for link in page.links if "#" in link]
    assert tests and {page for page, _ in tests} == {"allure-report/index.html"}
    if "allure HTML report skipped" not in made.stdout:
        report = json.loads((tmp_path / "allure-report" / "test-results.json").read_text(encoding="utf-8"))
        assert {report["byId"][test]["name"] for _, test in tests} == set(traces)
    # The IDs no trace claimed are one folded line that says why, not rows of dashes.
    empty = len([i for i in data["ids"] if i["results"]["reference"]["status"] == "none"])
    assert f"{empty} catalogue ID(s) without a result: no trace of this run claims them" in page.words
    assert 'id="id-IN-3"' in html and 'id="id-OUT-8"' not in html


def test_postfix_deviations_and_skips_are_written_in_the_page(tmp_path: Path) -> None:
    postfix = get("postfix")
    if (why := postfix.unavailable()) is not None:
        pytest.skip(why)
    run, data = matrix(tmp_path, ["reference", "postfix"], [PASSING, DEVIATING, SUBMISSION])
    assert run.returncode == 0, run.stderr
    results = {t["trace"]: t["results"]["postfix"] for t in data["traces"]}
    skipped = results[SUBMISSION]
    assert skipped["outcome"] == "skipped" and skipped["skip_reason"].startswith("target postfix lacks")
    deviated = results[DEVIATING]
    assert deviated["outcome"] == "deviation" and deviated["deviations"]
    assert all(d["difference"] and d["reason"] for d in deviated["deviations"])

    page = Page((tmp_path / "matrix.html").read_text(encoding="utf-8"))
    # In the text of the page, not in a tooltip.
    assert f"skipped: {skipped['skip_reason']}" in page.words
    for found in deviated["deviations"]:
        line = " ".join(f"{found['difference']} — known deviation: {found['reason']}".split())
        assert line in page.words
    ids = {i["id"]: i["results"]["postfix"] for i in data["ids"]}
    assert ids["C-RE"]["counts"] == {"skipped": 1} and ids["C-CAT"]["status"] == "deviation"
    assert "1 skipped" in page.words and "1 deviation" in page.words
