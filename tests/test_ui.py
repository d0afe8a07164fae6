"""The web page in a real headless Chromium: search by upload, then the cluster plots."""

from __future__ import annotations

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
from selenium.webdriver.support.ui import WebDriverWait

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
