"""Screenshot a local HTML page whole with headless Chromium (Debian
``/usr/bin/chromium`` + ``/usr/bin/chromedriver``, selenium): how the simnet
report example under docs/ was shot.

    python scripts/screenshot_page.py docs/simnet-report-example.html \\
        docs/simnet-report-example.png
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

WIDTH = 1000


def screenshot(page: Path, png: Path) -> None:
    profile = tempfile.mkdtemp(prefix="screenshot-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--no-first-run",
                 "--hide-scrollbars", f"--window-size={WIDTH},1000",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(page.resolve().as_uri())
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(WIDTH, height + 200)
        driver.find_element("tag name", "html").screenshot(str(png))
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python scripts/screenshot_page.py PAGE.html OUT.png")
    screenshot(Path(sys.argv[1]), Path(sys.argv[2]))
