"""Headless Chromium for the dashboard's browser tests (Debian's chromium + chromium-driver,
driven by Selenium). A missing browser fails the tests with the command that installs it:
they never skip."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = os.environ.get("POPOTO_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("POPOTO_CHROMEDRIVER", "/usr/bin/chromedriver")
INSTALL = "apt-get install -y chromium chromium-driver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,1100")


def require_browser() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        pytest.fail(f"the dashboard's browser tests need Chromium and its driver "
                    f"({', '.join(missing)} not found): {INSTALL}", pytrace=False)


def start_chromium(profile: Path, log_path: Path) -> webdriver.Chrome:
    """Chromium with a fresh profile (``--user-data-dir``), headless, no network of its own."""
    require_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    service = Service(executable_path=CHROMEDRIVER, log_output=str(log_path))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    return driver


def wait_for(driver: webdriver.Chrome, condition: Any, timeout: float = 30,
             message: str = "") -> Any:
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition, message)


def text_of(driver: webdriver.Chrome, css: str) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, css).text)


def log_in(driver: webdriver.Chrome, token: str) -> None:
    """Type the token into the header's login form and wait for the page to come back."""
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "login").click()
    wait_for(driver, lambda d: d.find_elements(By.ID, "logged-in"), message="logged in")
