"""The dashboard in a real browser (headless Chromium via Selenium) against a real Redis, a
real Celery worker and the dashboard served by uvicorn: open it, start a rebuild and watch
its progress bar reach 100 %, see a dead letter appear and replay it, model data with
``<script>`` shown as text, actions refused without the token. Screenshots go to the test's
tmp dir (``POPOTO_UPDATE_SCREENSHOTS=1`` also writes docs/dashboard.png)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By

from popoto.ops.asgi import ServerThread
from popoto.ops.examples.models import Note, Order
from popoto.dashboard import create_dashboard
from popoto.redis_db import get_client
from popoto.tasks import app, health, jobs, stats
from popoto.tasks.testing import wait_until
from tests.dashboard import browser as chromium
from tests.dashboard.browser import INSTALL, log_in, start_chromium, text_of, wait_for
from tests.dashboard.helpers import STREAM, TOKEN, make_dead_letter

pytestmark = [pytest.mark.standalone_only, pytest.mark.slow]

NOTE = "popoto.ops.examples.models.Note"
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    where = tmp_path_factory.mktemp("chromium")
    driver = start_chromium(where / "profile", where / "chromedriver.log")
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def site(worker: Any) -> Iterator[str]:
    """The dashboard (token set, rebuilds in chunks of 100) on uvicorn, a worker behind it."""
    with ServerThread(create_dashboard(TOKEN, chunk_size=100)) as server:
        yield server.url


@pytest.fixture
def page(browser: webdriver.Chrome, site: str, idle_after: None) -> webdriver.Chrome:
    browser.delete_all_cookies()
    return browser


def shot(driver: webdriver.Chrome, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 5000
    return path


def test_opens_the_dashboard(page: webdriver.Chrome, site: str, tmp_path: Path) -> None:
    Note.create(title="first", tag="t", score=1)
    page.get(f"{site}/")
    assert page.title == "Popoto operations"
    for section in ("models", "jobs", "streams", "schedule"):
        assert page.find_element(By.ID, section).is_displayed()
    row = page.find_element(By.CSS_SELECTOR, f"tr[data-model='{NOTE}']")
    assert row.find_element(By.CSS_SELECTOR, "[data-field='instances']").text == "1"
    assert "never checked" in row.text
    assert page.find_element(By.CSS_SELECTOR, "tr[data-entry='popoto-check-indexes']")
    assert "read-only until you log in" in text_of(page, "#auth")
    shot(page, tmp_path, "overview")


def _bar(driver: webdriver.Chrome, job_id: str) -> tuple[str, float, str]:
    row = driver.find_element(By.CSS_SELECTOR, f"tr[data-job='{job_id}']")
    status = row.find_element(By.CSS_SELECTOR, "[data-field='status']").text
    bar = row.find_element(By.CSS_SELECTOR, "progress[data-field='bar']")
    percent = row.find_element(By.CSS_SELECTOR, "[data-field='percent']").text
    return status, float(bar.get_property("value")), percent


def test_rebuild_progress_bar_reaches_100(page: webdriver.Chrome, site: str,
                                          tmp_path: Path) -> None:
    """Log in with the token, click Rebuild: the job's row polls its progress until done."""
    Note.bulk_create([Note(title=f"note {i}", tag=f"t{i % 7}", score=i) for i in range(4000)])
    page.get(f"{site}/")
    log_in(page, TOKEN)
    page.find_element(By.CSS_SELECTOR,
                      f"button[data-action='rebuild'][data-target='{NOTE}']").click()
    flash = wait_for(page, lambda d: d.find_elements(By.ID, "flash"), message="flash")[0]
    assert flash.text.startswith(f"rebuild of {NOTE} enqueued as job ")
    job_id = flash.text.rsplit(" ", 1)[1]
    seen: list[tuple[str, float, str]] = []

    def finished(driver: webdriver.Chrome) -> bool:
        seen.append(_bar(driver, job_id))
        return seen[-1][0] == "done"

    wait_for(page, finished, timeout=120, message="rebuild done")
    assert seen[0][0] in ("queued", "running"), seen[:3]  # watched while it ran
    assert seen[-1][1:] == (100.0, "100%")
    assert jobs.get(job_id)["status"] == "done"
    assert Note.check_indexes()["total"] == 0
    shot(page, tmp_path, "rebuild-done")
    _fill_for_the_screenshot()
    page.refresh()
    assert "100%" in page.find_element(By.CSS_SELECTOR, f"tr[data-job='{job_id}']").text
    path = shot(page, tmp_path, "dashboard")
    if os.environ.get("POPOTO_UPDATE_SCREENSHOTS"):
        DOCS_SCREENSHOT.write_bytes(path.read_bytes())


def _fill_for_the_screenshot() -> None:
    """What a running deployment has besides a rebuild: orders on the event stream, a
    consumer group with a dead letter, and beat's index check of every model (run by the
    worker: its jobs, each model's health and the schedule's last run)."""
    for i in range(3):
        Order.create(order_id=f"o{i}", customer="ann", total=f"{i + 1}.50")
    make_dead_letter("o-broken")
    app.send_task("popoto.maintenance.check_all_indexes")
    labels = {f"popoto.ops.examples.models.{name}" for name in ("Note", "Order", "Session")}
    wait_until(lambda: labels <= set(health.last_checks()), timeout=60,
               message="models checked")
    wait_until(lambda: "popoto.maintenance.check_all_indexes" in stats.last_runs(),
               timeout=30, message="the beat task's run recorded")


def test_a_dead_letter_appears_and_is_replayed(page: webdriver.Chrome, site: str,
                                               tmp_path: Path) -> None:
    page.get(f"{site}/")
    assert "No event streams." in text_of(page, "#streams")
    make_dead_letter("dl-9")  # a consumer whose handler fails dead-letters the event
    page.refresh()
    cell = page.find_element(By.CSS_SELECTOR, f"tr[data-stream='{STREAM}'] "
                                              "[data-field='dead-letters']")
    assert cell.text == "1"
    page.find_element(By.LINK_TEXT, STREAM).click()
    letter = wait_for(page, lambda d: d.find_elements(By.CSS_SELECTOR, "tr.dead-letter"))[0]
    assert "cannot project Order:dl-9" in letter.text and "projections" in letter.text
    shot(page, tmp_path, "dead-letter")
    log_in(page, TOKEN)
    page.find_element(By.CSS_SELECTOR, "button[data-action='replay']").click()
    wait_for(page, lambda d: d.find_elements(By.ID, "flash"), message="replayed")
    assert text_of(page, "#flash") == "replayed 1 dead letter(s)"
    assert text_of(page, "#dead-letters [data-field='dead-letters']") == "0"
    assert not page.find_elements(By.CSS_SELECTOR, "tr.dead-letter")
    assert get_client().xlen(f"dead:{STREAM}") == 0 and get_client().xlen(STREAM) == 2
    shot(page, tmp_path, "replayed")


def test_script_in_model_data_renders_as_text(page: webdriver.Chrome, site: str,
                                              tmp_path: Path) -> None:
    title = "<script>window.__pwned = 1</script>"
    tag = '<img src=x onerror="window.__pwned = 2">'
    note = Note.create(title=title, tag=tag, score=1)
    page.get(f"{site}/models/{NOTE}")
    row = page.find_element(By.CSS_SELECTOR, f"tr[data-key='{note.pk}']")
    cells = [c.text for c in row.find_elements(By.TAG_NAME, "td")]
    assert title in cells and tag in cells
    assert page.execute_script("return window.__pwned === undefined")
    assert not page.find_elements(By.CSS_SELECTOR, "#instances script, #instances img")
    shot(page, tmp_path, "script-as-text")


def test_actions_without_the_token_are_refused(page: webdriver.Chrome, site: str,
                                               tmp_path: Path) -> None:
    Note.create(title="x", tag="t", score=1)
    page.get(f"{site}/")
    page.find_element(By.CSS_SELECTOR,
                      f"button[data-action='rebuild'][data-target='{NOTE}']").click()
    wait_for(page, lambda d: d.find_elements(By.ID, "refused"), message="refused")
    assert page.find_element(By.TAG_NAME, "h2").text == "Refused"
    assert "log in first" in text_of(page, "#refused")
    shot(page, tmp_path, "refused-no-token")
    page.get(f"{site}/")
    page.find_element(By.ID, "token").send_keys("not-the-token")
    page.find_element(By.ID, "login").click()
    assert "wrong token" in wait_for(page, lambda d: d.find_elements(By.ID, "refused"))[0].text
    page.get(f"{site}/")
    log_in(page, TOKEN)  # logged in, but the form's CSRF token is tampered with
    page.execute_script("document.querySelectorAll('input[name=csrf]')"
                        ".forEach(function (i) { i.value = 'forged'; })")
    page.find_element(By.CSS_SELECTOR, f"button[data-action='check'][data-target='{NOTE}']")\
        .click()
    assert "CSRF" in wait_for(page, lambda d: d.find_elements(By.ID, "refused"))[0].text
    assert jobs.recent() == []
    with ServerThread(create_dashboard(token="")) as read_only:
        page.get(f"{read_only.url}/")
        assert "POPOTO_DASHBOARD_TOKEN is not set" in text_of(page, "#read-only")
        assert not page.find_elements(By.CSS_SELECTOR, "button[data-action]")
        shot(page, tmp_path, "read-only")
    assert jobs.recent() == []


def test_a_missing_browser_fails_with_the_install_command(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Never a silent skip: without Chromium the tests fail, saying how to install it."""
    monkeypatch.setattr(chromium, "CHROMIUM", "/nonexistent/chromium")
    with pytest.raises(pytest.fail.Exception, match=INSTALL):
        chromium.require_browser()
