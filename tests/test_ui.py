"""The web page in a real headless Chromium: search by upload and the cluster plots; then the
whole workflow (add, browse, delete, train, compare and activate)."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx2 as httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.conftest import CIFAR
from tests.server import ServerProcess

pytestmark = pytest.mark.slow

CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,1400",
]


def debian_chromium() -> tuple[str, str]:
    """Debian's Chromium and its driver, installed on first use where we are root with apt
    (as on a fresh machine of this project's kind); test tools never download a browser."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if (not chromium or not driver) and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"], check=True, env=env
        )
        chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.fail("the browser test needs Debian's chromium and chromium-driver packages")
    return chromium, driver


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    chromium, driver = debian_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    session = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    try:
        yield session
    finally:
        session.quit()


def test_search_and_cluster_in_the_browser(
    browser: webdriver.Chrome, tmp_path: Path, server_process: Callable[..., ServerProcess]
) -> None:
    base = server_process().base_url
    with httpx.Client(base_url=base, timeout=60) as client:
        for label in ("cat", "bird"):
            paths = sorted((CIFAR / label).iterdir())[:15]
            files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]
            assert client.post("/items", files=files, data={"labels": label}).status_code == 201
    browser.get(f"{base}/ui")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda b: "model " in b.find_element(By.ID, "model").text)
    query = sorted((CIFAR / "cat").iterdir())[4000]
    browser.find_element(By.ID, "file").send_keys(str(query))
    browser.find_element(By.ID, "search").click()
    wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "figure.neighbor img")) == 8)
    images = browser.find_elements(By.CSS_SELECTOR, "figure.neighbor img")
    wait.until(
        lambda b: all(b.execute_script("return arguments[0].naturalWidth", i) for i in images)
    )
    assert "prediction:" in browser.find_element(By.ID, "prediction").text
    browser.find_element(By.ID, "cluster").click()
    wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#by-label circle")) == 30)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#by-cluster circle")) == 30
    assert "purity" in browser.find_element(By.ID, "cluster-metrics").text
    assert browser.find_element(By.ID, "status").text == ""
    screenshot = tmp_path / "ui.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 20_000


DROP_FILES = """
const [zoneId, files] = arguments;
const transfer = new DataTransfer();
for (const [name, data] of files) {
  const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
  transfer.items.add(new File([bytes], name, { type: "image/jpeg" }));
}
const zone = document.getElementById(zoneId);
zone.dispatchEvent(new DragEvent("dragover", { dataTransfer: transfer, bubbles: true }));
zone.dispatchEvent(new DragEvent("drop", { dataTransfer: transfer, bubbles: true }));
"""


def test_add_browse_train_and_activate_in_the_browser(
    browser: webdriver.Chrome, tmp_path: Path, server_process: Callable[..., ServerProcess]
) -> None:
    """The whole workflow on the page alone: images added by file input and by drag and
    drop, browsed and one deleted, a training job watched to its end, and its model
    compared with the active one and activated."""
    base = server_process().base_url
    browser.get(f"{base}/ui")
    wait = WebDriverWait(browser, 240)
    wait.until(lambda b: "model " in b.find_element(By.ID, "model").text)
    first_version = browser.find_element(By.ID, "model").text.split()[1]
    by_id = lambda name: browser.find_element(By.ID, name)  # noqa: E731

    cats = sorted((CIFAR / "cat").iterdir())[:12]
    by_id("add-files").send_keys("\n".join(str(p) for p in cats))
    by_id("add-label").send_keys("cat")
    by_id("add").click()
    wait.until(lambda b: by_id("add-result").text == "added 12 item(s)")
    birds = sorted((CIFAR / "bird").iterdir())[:12]
    files = [[p.name, base64.b64encode(p.read_bytes()).decode()] for p in birds]
    browser.execute_script(DROP_FILES, "drop", files)
    assert by_id("add-result").text == "12 image(s) ready"
    by_id("add-label").clear()
    by_id("add-label").send_keys("bird")
    by_id("add").click()
    wait.until(lambda b: by_id("add-result").text == "added 12 item(s)")

    wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#items figure.item")) == 24)
    assert by_id("browse-range").text == "1\N{EN DASH}24 of 24"
    browser.find_elements(By.CSS_SELECTOR, "#items button.delete")[0].click()
    wait.until(lambda b: by_id("browse-range").text == "1\N{EN DASH}23 of 23")
    by_id("browse-label").send_keys("bird")
    by_id("browse").click()
    wait.until(lambda b: by_id("browse-range").text == "1\N{EN DASH}12 of 12")

    by_id("train-epochs").clear()
    by_id("train-epochs").send_keys("2")
    Select(by_id("train-activate")).select_by_value("never")
    by_id("train").click()
    wait.until(lambda b: by_id("train-status").text.startswith("running"))
    wait.until(lambda b: by_id("train-status").text.startswith(("succeeded", "failed")))
    assert by_id("train-status").text.startswith("succeeded"), by_id("train-status").text
    progress = by_id("train-progress")
    assert progress.get_attribute("value") == progress.get_attribute("max") != "1"
    assert len(browser.find_elements(By.CSS_SELECTOR, "#train-curve circle.loss")) >= 1
    assert len(browser.find_elements(By.CSS_SELECTOR, "#train-curve circle.precision")) == 2

    wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#models tbody tr")) == 2)
    new_row = browser.find_element(By.CSS_SELECTOR, "#models tbody tr:not(.active)")
    new_version = new_row.get_attribute("data-version")
    assert new_version != first_version
    cells = [c.text for c in new_row.find_elements(By.TAG_NAME, "td")]
    assert cells[3] != "\N{EN DASH}"  # its held-out precision@1, beside the active model's
    new_row.find_element(By.CSS_SELECTOR, "button.activate").click()
    wait.until(lambda b: new_version in by_id("model").text)
    active = browser.find_element(By.CSS_SELECTOR, "#models tbody tr.active")
    assert active.get_attribute("data-version") == new_version
    assert by_id("status").text == ""
    assert browser.save_screenshot(str(tmp_path / "workflow.png"))
