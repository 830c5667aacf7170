"""The status page in a real browser (Debian's headless Chromium through its chromedriver).

One story against the real stack (service, RabbitMQ, one of our endpoints, the official SDK):
sign in, watch an endpoint come online, a task succeed, a task fail with its remote traceback
shown, and the endpoint go offline once stopped. Every step leaves a screenshot in
`$CI_ARTIFACTS_DIR/status-page/` (default `test-artifacts/status-page/` in the repository).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.wait import WebDriverWait

from devstack.stack import Stack
from tests.conftest import ROOT
from tests.e2e.conftest import SdkRunner

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ENDPOINT = "statuspage"

SNIPPET = """
import json
from globus_compute_sdk import Executor
from globus_compute_sdk.errors import TaskExecutionFailed
def add(a, b=0):
    return a + b
def explode():
    raise ValueError("status page <b>kaboom</b>")
with Executor(endpoint_id={ep!r}) as ex:
    ok, bad = ex.submit(add, 40, b=2), ex.submit(explode)
    assert ok.result(timeout=120) == 42
    try:
        bad.result(timeout=120)
    except TaskExecutionFailed:
        pass
print(json.dumps({{"ok": ok.task_id, "bad": bad.task_id}}))
"""


class Shots:
    """Numbered screenshots of each step."""

    def __init__(self, driver: WebDriver) -> None:
        base = os.environ.get("CI_ARTIFACTS_DIR")
        self.dir = (Path(base) if base else ROOT / "test-artifacts") / "status-page"
        self.dir.mkdir(parents=True, exist_ok=True)
        for old in self.dir.glob("*.png"):  # a previous run's, which would mislead
            old.unlink()
        self.driver = driver
        self.n = 0

    def take(self, step: str) -> None:
        self.n += 1
        self.driver.save_screenshot(str(self.dir / f"{self.n:02d}-{step}.png"))


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    for tool in (CHROMIUM, CHROMEDRIVER):
        if not tool.exists():
            pytest.fail(f"{tool} is missing: install Debian's chromium and chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument("--window-size=1400,1200")
    # An explicit driver path: Selenium never tries to download one.
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_until(
    driver: WebDriver, shots: Shots, what: str, check: Callable[[], bool], timeout: float = 90
) -> None:
    """Reload the page until `check` holds (the page has no script that would update it)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except WebDriverException:
            pass  # the element is not there yet
        if time.monotonic() > deadline:
            shots.take(f"timeout-{what}")
            raise AssertionError(f"{what}: not seen in {timeout}s\n{driver.page_source[-4000:]}")
        time.sleep(1)
        driver.refresh()


def _state(driver: WebDriver, endpoint_id: str) -> str:
    row = driver.find_element(By.ID, f"ep-{endpoint_id}")
    return str(row.get_attribute("data-state"))


def _status(driver: WebDriver, task_id: str) -> str:
    return str(driver.find_element(By.ID, f"task-{task_id}").get_attribute("data-status"))


def test_sign_in_and_watch_an_endpoint_its_tasks_and_its_end(
    stack: Stack, browser: WebDriver, run_sdk: SdkRunner
) -> None:
    shots = Shots(browser)
    browser.get(f"{stack.url}/status")
    assert browser.current_url.endswith("/status/login")
    browser.find_element(By.ID, "client_id").send_keys(stack.client_id)
    browser.find_element(By.ID, "client_secret").send_keys(stack.client_secret)
    shots.take("sign-in")
    browser.find_element(By.ID, "sign-in").click()
    signed_in = WebDriverWait(browser, 30).until(
        lambda d: d.find_elements(By.ID, "identity") or d.find_elements(By.ID, "login-error")
    )
    assert signed_in[0].text == stack.client_id, browser.page_source
    assert browser.current_url.endswith("/status")
    # The session cookie is out of the page's reach (HttpOnly).
    assert "status_session" not in str(browser.execute_script("return document.cookie"))
    shots.take("signed-in")

    stack.configure_endpoint(
        ENDPOINT,
        "display_name: status page\nengine:\n  type: ProcessPoolEngine\n  max_workers: 1\n"
        "heartbeat_period: 2\n",
    )
    ep = stack.start_endpoint(ENDPOINT)
    wait_until(browser, shots, "online", lambda: _state(browser, ep) == "online")
    shots.take("endpoint-online")

    ids = run_sdk(SNIPPET.format(ep=ep))
    wait_until(browser, shots, "success", lambda: _status(browser, ids["ok"]) == "success")
    shots.take("task-succeeded")
    wait_until(browser, shots, "failed", lambda: _status(browser, ids["bad"]) == "failed")
    traceback = browser.find_element(By.ID, f"traceback-{ids['bad']}")
    browser.execute_script("arguments[0].scrollIntoView()", traceback)
    assert "Traceback" in traceback.text and "in explode" in traceback.text
    # Shown as text: the markup in the message is not rendered.
    assert "ValueError: status page <b>kaboom</b>" in traceback.text
    shots.take("task-failed-traceback")

    browser.get(f"{stack.url}/status/endpoints/{ep}")
    assert browser.find_element(By.ID, "endpoint-details").get_attribute("data-state") == "online"
    assert browser.find_element(By.ID, f"traceback-{ids['bad']}").is_displayed()
    shots.take("endpoint-page")

    stack.stop_endpoint(ENDPOINT)
    browser.get(f"{stack.url}/status")
    wait_until(browser, shots, "offline", lambda: _state(browser, ep) == "offline")
    shots.take("endpoint-offline")

    browser.find_element(By.ID, "sign-out").click()
    # The click posts a form: the browser follows the redirect in its own time.
    WebDriverWait(browser, 60).until(lambda d: d.current_url.endswith("/status/login"))
    browser.get(f"{stack.url}/status/endpoints/{ep}")
    assert browser.current_url.endswith("/status/login")
    shots.take("signed-out")
