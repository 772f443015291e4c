"""Headless Chromium for the ``browser`` tests."""

import shutil
from pathlib import Path

import pytest


def chrome(profile: Path):
    """Headless Chromium + chromedriver from Debian (``make browser``); selenium never downloads a browser."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)
    driver = shutil.which("chromedriver") or "/usr/lib/chromium/chromedriver"
    if browser is None or not Path(driver).is_file():
        pytest.fail("Chromium or chromedriver is missing: `make browser` installs Debian's chromium + chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--window-size=1100,900",
                 f"--user-data-dir={profile}"):  # fmt: skip
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))
