"""The HTML leaderboard in headless Chromium: loads with no console error and no network request,
shows the table and every plot, and sorts rows by a clicked column. (The `browser_page` fixture is in
tests/conftest.py; a sweep's report is checked in the browser in tests/sweep/test_sweep_run.py.)"""

from __future__ import annotations

from pathlib import Path

from harness.report import load_runs, write_report


def _column(page, index: int) -> list[str | None]:
    return page.evaluate(
        f"Array.from(document.querySelectorAll('#leaderboard tbody tr')).map(r => r.cells[{index}].dataset.sort)"
    )


def test_html_leaderboard_loads_cleanly_shows_table_and_plots_and_sorts(browser_page, two_runs, tmp_path):
    out = tmp_path / "report"
    write_report(load_runs([two_runs]), ["html"], out)
    problems: list[str] = []
    requests: list[str] = []
    browser_page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
    browser_page.on("pageerror", lambda e: problems.append(str(e)))
    browser_page.on("request", lambda r: requests.append(r.url))
    browser_page.goto((out / "index.html").as_uri())
    browser_page.wait_for_load_state("load")
    assert problems == []
    assert all(url.startswith("file://") for url in requests), requests
    images = browser_page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
    assert len(images) == 8 and all(done and width > 100 for done, width in images)  # 4 plots x 2 runs
    table = browser_page.locator("#leaderboard")
    assert table.is_visible() and table.bounding_box()["y"] < 200
    assert browser_page.locator("#leaderboard tbody tr").count() == 24
    assert browser_page.locator("img").first.bounding_box()["y"] < 1800  # a plot is on the first screen
    shot = tmp_path / "leaderboard.png"
    browser_page.screenshot(path=str(shot))
    assert shot.stat().st_size > 50_000  # a rendered page, not a blank one

    headers = browser_page.evaluate("Array.from(document.querySelectorAll('#leaderboard th')).map(h => h.textContent)")
    refusal = headers.index("refusal")
    browser_page.locator("#leaderboard th").nth(refusal).click()
    values = [float(v) for v in _column(browser_page, refusal) if v]
    assert values == sorted(values) and len(values) == 24
    browser_page.locator("#leaderboard th").nth(refusal).click()
    assert [float(v) for v in _column(browser_page, refusal) if v] == sorted(values, reverse=True)
    browser_page.locator("#leaderboard th").nth(headers.index("rel. reduction")).click()
    sort_keys = _column(browser_page, headers.index("rel. reduction"))
    filled = [k for k in sort_keys if k]
    assert sort_keys[: len(filled)] == filled  # empty cells sort last
    condition = browser_page.locator("#leaderboard th").nth(headers.index("condition"))
    condition.click()
    assert condition.get_attribute("aria-sort") == "ascending"
    first = browser_page.locator("#leaderboard tbody tr").first.locator("td").nth(headers.index("condition"))
    assert first.text_content() == "baseline"


def test_docs_screenshot_exists():
    assert (Path(__file__).resolve().parents[2] / "docs" / "leaderboard.png").is_file()
