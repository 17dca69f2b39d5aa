"""``raystep report``: the page in a real headless Chromium (Selenium), on a small run folder.

The run folder is written by the stages' own writers (see ``report_run.py``); the report is built
twice: as one self-contained ``index.html`` and with its pair data in many small chunk files beside
it (so the chunk loading path is exercised). Every browser test saves a screenshot under
``test-artifacts/report/`` (or ``$RAYSTEP_ARTIFACTS``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from raystep.cli import main as cli_main
from raystep.report import build_report, refresh_report
from raystep.report.page import js_json

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
ARTIFACTS = Path(os.environ.get("RAYSTEP_ARTIFACTS") or REPO / "test-artifacts") / "report"

needs_browser = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)",
)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from fake_openai import FakeOpenAI
    from report_run import build_small_run

    expected = build_small_run(tmp_path_factory.mktemp("report-run"), FakeOpenAI)
    run = expected["run"]
    build_report(run)  # one self-contained page
    build_report(run, run / "report-chunked", inline_max_bytes=0, preview_chunk=5, detail_chunk=4)
    return expected


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM or ""
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1440,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER or ""), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def page_url(run: Path, folder: str, hash_: str) -> str:
    return (run / folder / "index.html").as_uri() + "#" + hash_


def open_page(driver: Any, url: str) -> None:
    driver.get("about:blank")  # a fresh document: a hash-only change would keep the old page's state
    driver.get(url)
    wait_for(driver, lambda: driver.execute_script("return document.body.getAttribute('data-ready')") == "1")


def wait_for(driver: Any, ok: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = ok()
        if value:
            return value
        time.sleep(0.05)
    logs = driver.get_log("browser") if hasattr(driver, "get_log") else []
    raise AssertionError(f"timed out waiting; browser log: {logs}")


def previews_loaded(driver: Any) -> bool:
    return driver.execute_script(
        "var b = document.getElementById('pairs-body'); return b && b.getAttribute('data-previews') === 'done';"
    )


def screenshot(driver: Any, name: str) -> Path:
    """A full-page PNG (the window is resized to the page's height, at most 6000 px)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for _ in range(2):  # the page may lay out taller once the window is
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1440, min(6000, max(900, int(height) + 120)))
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    driver.set_window_size(1440, 1000)
    return path


def texts(driver: Any, css: str) -> list[str]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0])).map(e => e.textContent);", css
    )


def choose(driver: Any, element_id: str, value: Any) -> None:
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", element_id)).select_by_value(str(value))


# -- in the browser ------------------------------------------------------------------------------


@needs_browser
def test_counts_on_the_page_equal_the_manifest(small_run, browser) -> None:
    run, stages = small_run["run"], small_run["manifest"]["stages"]
    open_page(browser, page_url(run, "report", "overview"))
    counts = dict(
        browser.execute_script(
            "return Array.from(document.querySelectorAll('[data-count]'))"
            ".map(e => [e.getAttribute('data-count'), e.textContent]);"
        )
    )
    assert int(counts["problems"]) == stages["problems"]["problems"] == 10
    assert int(counts["samples"]) == stages["collect"]["samples"] == 40
    assert int(counts["localized"]) == stages["localize"]["localized"] == stages["collect"]["wrong"] - 1
    assert int(counts["pairs"]) == stages["rectify"]["pairs"] == len(small_run["pairs"])
    assert int(counts["train_steps"]) == stages["train"]["steps"] == 12
    assert int(counts["evals"]) == 2
    # the stage table shows the manifest's own numbers
    for stage, field in (("collect", "wrong"), ("localize", "labelled"), ("rectify", "continuations")):
        chip = browser.find_element("css selector", f'[data-stage="{stage}"][data-field="{field}"]').text
        assert chip == f"{field} {stages[stage][field]}"
    # the only warning is the one pair left unscored on purpose
    warnings = texts(browser, "#warnings li")
    assert warnings == [
        f"train/reference.parquet scores {small_run['scored']} of the {len(small_run['pairs'])} pairs shown"
    ]
    screenshot(browser, "overview")

    open_page(browser, page_url(run, "report", "pairs"))
    assert browser.find_element("id", "pairs-total").text == str(stages["rectify"]["pairs"])
    assert browser.find_element("id", "pairs-matching").text == str(stages["rectify"]["pairs"])
    open_page(browser, page_url(run, "report", "collection"))
    assert browser.find_element("css selector", '[data-count="c-samples"]').text == "40"
    errors = browser.find_element("css selector", '[data-count="c-errors"]').text
    assert errors == "1"  # the one failed generation
    screenshot(browser, "collection")
    open_page(browser, page_url(run, "report", "training"))
    paths = browser.find_elements("css selector", "#train-charts path.series")
    assert [int(p.get_attribute("data-points")) for p in paths][:1] == [12]  # the loss curve: every step
    screenshot(browser, "training")


@needs_browser
@pytest.mark.parametrize("folder", ["report", "report-chunked"])
def test_filtering_by_k_shows_exactly_the_matching_pairs(small_run, browser, folder) -> None:
    run, pairs = small_run["run"], small_run["pairs"]
    open_page(browser, page_url(run, folder, "pairs"))
    choose(browser, "page-size", 1000)
    ks = sorted({p["step_index"] for p in pairs})
    assert len(ks) >= 3
    for k in ks:
        choose(browser, "filter-k", k)
        wait_for(browser, lambda: previews_loaded(browser))
        want = sorted(p["pair_id"] for p in pairs if p["step_index"] == k)
        assert sorted(texts(browser, "td.pair-id")) == want
        assert browser.find_element("id", "pairs-matching").text == str(len(want))
        shown_k = texts(browser, 'tr.pair-row td[data-col="k"]')
        assert set(shown_k) == {str(k)}
    # k together with the success-rate range
    k = ks[0]
    choose(browser, "filter-k", k)
    rate_min = browser.find_element("id", "filter-rate-min")
    rate_min.send_keys("0.5")
    wait_for(browser, lambda: previews_loaded(browser))
    want = sorted(p["pair_id"] for p in pairs if p["step_index"] == k and p["rectify_success_rate"] >= 0.5)
    assert sorted(texts(browser, "td.pair-id")) == want
    screenshot(browser, f"pairs-filtered-{folder}")


@needs_browser
@pytest.mark.parametrize("folder", ["report", "report-chunked"])
def test_a_pair_opens_with_its_chosen_and_rejected_text(small_run, browser, folder) -> None:
    run, pairs = small_run["run"], small_run["pairs"]
    index = next(i for i, p in enumerate(pairs) if p["pair_id"] != small_run["xss_pair"] and i > 3)
    pair = pairs[index]
    open_page(browser, page_url(run, folder, "pairs"))
    wait_for(browser, lambda: previews_loaded(browser))
    browser.find_element("css selector", f'tr.pair-row[data-index="{index}"]').click()
    wait_for(browser, lambda: browser.find_elements("css selector", "#pair-detail .side-chosen .step-text"))
    assert texts(browser, "#pair-detail .side-chosen .step-text") == [pair["chosen"]]
    assert texts(browser, "#pair-detail .side-rejected .step-text") == [pair["rejected"]]
    assert texts(browser, "#pair-detail .question") == [pair["prompt"]]
    assert texts(browser, "#pair-detail details.prefix pre") == [pair["initial_reason_steps"]]
    assert texts(browser, "#pair-detail .full-chosen") == [pair["full_chosen"]]
    assert texts(browser, "#pair-detail .full-rejected") == [pair["full_rejected"]]
    # the differences are marked on both sides, and only the differing words
    assert browser.find_elements("css selector", "#pair-detail del.d-del")
    assert browser.find_elements("css selector", "#pair-detail ins.d-ins")
    # each localizer's verdict, and the judge's reply
    methods = browser.execute_script(
        "return Array.from(document.querySelectorAll('#pair-detail .verdict')).map(e => e.getAttribute('data-method'));"
    )
    assert methods == ["judge", "verifier"]
    assert texts(browser, "#pair-detail .judge-reply")[0].startswith("Step 1:")
    # the reference margin from train/reference.parquet
    margin = browser.find_element("id", "ref-margin").text
    ref = (-0.5 * len(pair["chosen"])) - (-0.5 * len(pair["rejected"]) - 1.0)
    assert margin == f"margin {ref:.3f}"
    assert browser.current_url.endswith(f"#pairs/{index}")
    screenshot(browser, f"pair-open-{folder}")

    # the last pair was not scored: the page says so, instead of a number
    open_page(browser, page_url(run, folder, f"pairs/{len(pairs) - 1}"))
    wait_for(browser, lambda: browser.find_elements("css selector", "#pair-detail .side-chosen"))
    assert "not scored yet" in browser.find_element("id", "pair-detail").text
    assert texts(browser, "#pair-detail .side-chosen .step-text") == [pairs[-1]["chosen"]]


@needs_browser
def test_before_after_lists_the_fixed_and_broken_problems(small_run, browser) -> None:
    run = small_run["run"]
    compare = json.loads((run / "demo" / "compare" / "compare.json").read_text())
    open_page(browser, page_url(run, "report", "evaluation"))
    fixed = browser.execute_script(
        "return Array.from(document.querySelectorAll('.fixed-list details.item')).map(e => e.dataset.id);"
    )
    broken = browser.execute_script(
        "return Array.from(document.querySelectorAll('.broken-list details.item')).map(e => e.dataset.id);"
    )
    assert sorted(fixed) == small_run["fixed"] and sorted(broken) == small_run["broken"]
    assert browser.find_element("css selector", '[data-count="fixed"]').text == str(
        compare["overall"]["only_b"]
    )
    assert browser.find_element("css selector", '[data-count="broken"]').text == str(
        compare["overall"]["only_a"]
    )
    assert f"{compare['overall']['mcnemar_p']:.3g}" in browser.find_element("css selector", ".mcnemar").text
    # a fixed problem opens its two answers: wrong before, right after
    item = browser.find_element("css selector", f'.fixed-list details.item[data-id="{fixed[0]}"]')
    item.find_element("css selector", "summary").click()
    answers = item.find_elements("css selector", "pre.answer")
    assert len(answers) == 2 and all(a.is_displayed() for a in answers)
    rows = {
        name: {
            r["id"]: r
            for r in map(
                json.loads, (run / "eval" / name / "synth" / "samples.jsonl").read_text().splitlines()
            )
        }
        for name in ("before", "after")
    }
    assert answers[0].text == rows["before"][fixed[0]]["response"].strip()
    assert answers[1].text == rows["after"][fixed[0]]["response"].strip()
    screenshot(browser, "evaluation")


@needs_browser
@pytest.mark.parametrize("folder", ["report", "report-chunked"])
def test_an_injected_script_is_shown_as_text_and_never_runs(small_run, browser, folder) -> None:
    from report_run import XSS_ANSWER, XSS_STEP

    run, pairs = small_run["run"], small_run["pairs"]
    index = next(i for i, p in enumerate(pairs) if p["pair_id"] == small_run["xss_pair"])
    assert XSS_STEP.strip().split(" so")[0] in pairs[index]["chosen"]
    open_page(browser, page_url(run, folder, f"pairs/{index}"))
    wait_for(browser, lambda: browser.find_elements("css selector", "#pair-detail .side-chosen .step-text"))
    wait_for(browser, lambda: previews_loaded(browser))
    shown = texts(browser, "#pair-detail .side-chosen .step-text")[0]
    assert shown == pairs[index]["chosen"] and "<script>window.__xss = 1</script>" in shown
    replies = "\n".join(texts(browser, ".judge-reply"))
    assert '<img src=x onerror="window.__xss = 3">' in replies
    assert any("<script>" in t for t in texts(browser, "td.preview"))  # the table row preview too
    browser.find_element("id", "tab-evaluation").click()
    item = wait_for(
        browser, lambda: browser.find_elements("css selector", '.broken-list details.item[data-id="t05"]')
    )[0]
    item.find_element("css selector", "summary").click()
    assert XSS_ANSWER in item.text
    time.sleep(0.3)  # give an image error handler the time it would need
    assert browser.execute_script("return typeof window.__xss") == "undefined"
    assert browser.execute_script("return document.querySelectorAll('img').length") == 0
    scripts = browser.execute_script("return Array.from(document.scripts).map(s => s.textContent)")
    assert not [s for s in scripts if s.strip().startswith("window.__xss")]  # no script element was made
    screenshot(browser, f"xss-{folder}")


# -- without a browser ------------------------------------------------------------------------------


def test_embedded_json_cannot_close_its_script_element() -> None:
    text = js_json({"t": "</script><script>alert(1)</script><!-- \u2028 & ]]>"})
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == {"t": "</script><script>alert(1)</script><!-- \u2028 & ]]>"}


def test_cli_writes_the_page_and_a_damaged_shard_is_named_not_fatal(small_run, tmp_path, capsys) -> None:
    run = tmp_path / "copy"
    shutil.copytree(small_run["run"], run, ignore=shutil.ignore_patterns("report*"))
    broken = run / "samples" / "part-00001.parquet"
    broken.write_bytes(b"not parquet")
    assert cli_main(["report", str(run)]) == 0
    out = capsys.readouterr()
    assert f"report: {run / 'report' / 'index.html'}" in out.out
    assert f"{broken}: unreadable shard" in out.err
    assert "manifest collect.samples = 40, but samples/ holds" in out.err
    html = (run / "report" / "index.html").read_text()
    assert "Content-Security-Policy" in html  # and nothing is loaded from elsewhere:
    assert ' src="http' not in html and "<link" not in html and "fetch(" not in html
    assert cli_main(["report", str(tmp_path / "nowhere")]) == 2
    assert refresh_report(tmp_path / "nowhere") is None
    assert "could not refresh" in capsys.readouterr().err


def test_refresh_on_an_empty_run_folder_writes_a_page(tmp_path) -> None:
    index = refresh_report(tmp_path)
    assert index == tmp_path / "report" / "index.html" and index.exists()
    again = refresh_report(tmp_path)  # a second refresh replaces the first one whole
    assert again == index
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".report.new", ".report.old"))]


def test_a_diverged_loss_and_a_missing_stage_do_not_break_the_page(small_run, tmp_path) -> None:
    run = tmp_path / "copy"
    shutil.copytree(small_run["run"], run, ignore=shutil.ignore_patterns("report*"))
    metrics = run / "train" / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    rows[-1]["loss"] = float("nan")
    rows[-2]["loss"] = float("inf")
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    shutil.rmtree(run / "localized")
    result = build_report(run)
    html = result.index.read_text()
    payload = json.loads(html.split("<script>window.RS_DATA=", 1)[1].split(";</script>", 1)[0])
    assert payload["training"]["columns"]["loss"][-2:] == [None, None]  # shown as gaps, not NaN
    assert payload["training"]["columns"]["loss"][0] == rows[0]["loss"]
    assert payload["lineage"]["localized"] == 0 and payload["lineage"]["pairs"] == len(small_run["pairs"])
    assert result.pairs == len(small_run["pairs"])
