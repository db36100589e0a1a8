"""The review station in a real browser: headless Chromium (Debian's chromium and
chromium-driver, installed by .ci/run) driven by Selenium against `python -m worker.review`
serving real SQL records. Sign in, open the queue, open an inspection, label it with the
keyboard, see the next one open, find the label in the database with the reviewer's name."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from model.stores.records import RecordStore
from tests.review import PASSWORDS, QUEUE_ORDER, ReviewData, make_review_data, review_env
from worker.embedded_broker import free_port

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture
def station(tmp_path: Path, sample_data: Path) -> Iterator[tuple[str, ReviewData]]:
    """`python -m worker.review` on a free port, as an operator starts it."""
    data = make_review_data(tmp_path, sample_data)
    port = free_port()
    log = (tmp_path / "review.log").open("wb")
    env = {**os.environ, **review_env(data), "REVIEW_PORT": str(port)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker.review"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, (tmp_path / "review.log").read_text()
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        assert time.monotonic() < deadline, "the station did not start"
        time.sleep(0.2)
    yield base, data
    proc.terminate()
    proc.wait(30)
    log.close()


@pytest.fixture
def browser() -> Iterator[object]:
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip(
            "no chromium/chromedriver: apt-get install chromium chromium-driver "
            "(CI installs them: .ci/run)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument("--window-size=1280,900")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(5)
    yield driver
    driver.quit()


def sign_in(driver, base: str, name: str) -> None:
    """Sign in and wait until the station has answered: a page opened before the session
    cookie is set lands on the login form (seen once in CI on a loaded machine)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(base + "/")
    assert "/login" in driver.current_url
    driver.find_element(By.NAME, "name").send_keys(name)
    driver.find_element(By.NAME, "password").send_keys(PASSWORDS[name])
    driver.find_element(By.CSS_SELECTOR, "form.login button").click()
    WebDriverWait(driver, 10).until(lambda d: "/login" not in d.current_url)


def test_a_reviewer_labels_with_the_keyboard_and_the_next_inspection_opens(
    station, browser
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    base, data = station
    sign_in(browser, base, "anna")
    rows = browser.find_elements(By.CSS_SELECTOR, "a.open")
    assert [r.text for r in rows] == QUEUE_ORDER
    # The counts arrive after the page, fetched by its script.
    WebDriverWait(browser, 10).until(
        ec.text_to_be_present_in_element((By.CSS_SELECTOR, "p.counts strong.total"), "5")
    )
    rows[0].click()
    assert browser.find_element(By.CSS_SELECTOR, "h1.event").text == QUEUE_ORDER[0]
    photo = browser.find_element(By.CSS_SELECTOR, "img.photo")
    assert browser.execute_script("return arguments[0].naturalWidth", photo) > 0
    browser.find_element(By.TAG_NAME, "body").send_keys("a")
    WebDriverWait(browser, 10).until(
        ec.text_to_be_present_in_element((By.CSS_SELECTOR, "h1.event"), QUEUE_ORDER[1])
    )
    with RecordStore(data.url) as store:
        row = store.get(QUEUE_ORDER[0])
    assert row is not None and row.label == "anomalous" and row.labelled_by == "anna"
    # J goes on to the next without labelling, K comes back.
    browser.find_element(By.TAG_NAME, "body").send_keys("j")
    WebDriverWait(browser, 10).until(
        ec.text_to_be_present_in_element((By.CSS_SELECTOR, "h1.event"), QUEUE_ORDER[2])
    )
    browser.find_element(By.TAG_NAME, "body").send_keys("k")
    WebDriverWait(browser, 10).until(
        ec.text_to_be_present_in_element((By.CSS_SELECTOR, "h1.event"), QUEUE_ORDER[1])
    )
    with RecordStore(data.url) as store:
        assert store.get(QUEUE_ORDER[1]).label is None  # type: ignore[union-attr]


def test_a_viewer_sees_no_label_buttons_and_the_keys_change_nothing(station, browser) -> None:
    from selenium.webdriver.common.by import By

    base, data = station
    sign_in(browser, base, "vic")
    browser.find_elements(By.CSS_SELECTOR, "a.open")[0].click()
    assert not browser.find_elements(By.CSS_SELECTOR, "form.labelling")
    browser.find_element(By.TAG_NAME, "body").send_keys("a")
    time.sleep(0.5)
    assert browser.find_element(By.CSS_SELECTOR, "h1.event").text == QUEUE_ORDER[0]
    with RecordStore(data.url) as store:
        assert store.get(QUEUE_ORDER[0]).label is None  # type: ignore[union-attr]


def test_in_the_browser_an_attribute_holding_a_script_is_text_and_runs_nothing(
    station, browser
) -> None:
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    base, _ = station
    sign_in(browser, base, "anna")
    browser.get(base + "/inspections/e-xss")
    shown = browser.find_element(By.CSS_SELECTOR, "pre.attributes").text
    assert "<script>alert('station')</script>" in shown  # read as text, as it was sent
    scripts = browser.execute_script(
        "return Array.from(document.scripts).map(s => s.src || s.textContent)"
    )
    assert scripts == [base + "/static/review.js"], scripts  # the station's own, nothing else
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018 - reading it is the check


def test_in_the_browser_a_label_without_the_csrf_token_is_refused(station, browser) -> None:
    from selenium.webdriver.common.by import By

    base, data = station
    sign_in(browser, base, "anna")
    browser.get(base + f"/inspections/{QUEUE_ORDER[0]}")
    # The form as a forged page would post it: everything but the token.
    browser.execute_script(
        "const f = document.querySelector('form.labelling');"
        "f.querySelector('input[name=csrf]').remove();"
        "f.querySelector('button[value=anomalous]').click();"
    )
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "CSRF" in body, body
    with RecordStore(data.url) as store:
        assert store.get(QUEUE_ORDER[0]).label is None  # type: ignore[union-attr]


def test_in_the_browser_an_image_route_naming_a_path_answers_404(station, browser) -> None:
    from selenium.webdriver.common.by import By

    base, _ = station
    sign_in(browser, base, "anna")
    for path in (
        "/media/%2e%2e%2f%2e%2e%2fetc%2fpasswd/image",  # ../../etc/passwd, as a browser sends it
        "/media/%2Fetc%2Fpasswd/image",  # an absolute path
        "/media/..%2F..%2Fetc%2Fpasswd/overlay",
    ):
        browser.get(base + path)
        status = browser.execute_script(
            "return performance.getEntriesByType('navigation')[0].responseStatus"
        )
        body = browser.find_element(By.TAG_NAME, "body").text
        assert status == 404, (path, status, body)
        assert "root:" not in body
