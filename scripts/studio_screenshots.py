"""Screenshots of every kotune studio page for docs/ (headless Debian Chromium via Selenium).

    .venv/bin/python scripts/studio_screenshots.py runs/demo docs/
      ROOT is the folder above OUT (here: the repository), OUT a finished recipe output
      (make demo's runs/demo). Starts `kotune studio` on a free port, asks one question in
      the chat page (base and tuned), and writes docs/studio-{runs,run,data,eval,chat,launch}.png.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

QUESTION = "국가초고성능컴퓨팅 육성 기본계획은 몇 년마다 수립하나요?"


def main(out: str, dest: str) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    run = Path(out).resolve()
    root = Path.cwd().resolve()
    rel = run.relative_to(root).as_posix()
    dest_dir = Path(dest)
    dest_dir.mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "kotune", "studio", "--root", str(root), "--port", str(port)])
    url = f"http://127.0.0.1:{port}"
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1366,1000",
              "--hide-scrollbars"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(url + "/runs", timeout=5)
                break
            except OSError:
                time.sleep(0.3)

        def shot(name: str, path: str, scroll_to: str | None = None) -> None:
            if path:
                driver.get(url + path)
                time.sleep(1.0)
            if scroll_to:
                driver.execute_script("arguments[0].scrollIntoView()", driver.find_element(By.CSS_SELECTOR, scroll_to))
            driver.save_screenshot(str(dest_dir / f"studio-{name}.png"))
            print(dest_dir / f"studio-{name}.png")

        shot("runs", "/runs")
        shot("run", f"/run?path={rel}", "section.model")
        shot("data", f"/data?path={rel}", "#data-filters")
        shot("eval", f"/eval?path={rel}/eval&flip=worse", "#eval-filters")
        driver.get(url + "/launch")
        Select(driver.find_element(By.ID, "recipe")).select_by_value("recipes/policy-qa.yaml")
        Select(driver.find_element(By.ID, "profile")).select_by_value("gemma")
        driver.find_element(By.ID, "overrides").send_keys("steps.train.epochs=2")
        driver.find_element(By.ID, "check-btn").click()
        WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "launch-ok").is_displayed())
        shot("launch", "")
        driver.get(url + "/chat")
        for box in driver.find_elements(By.CSS_SELECTOR, 'input[name="model"]'):
            if box.get_attribute("value") in ("base:builtin:gemma-3-270m", f"run:{rel}/model") and not box.is_selected():
                box.click()
            elif box.get_attribute("value") not in ("base:builtin:gemma-3-270m", f"run:{rel}/model") and box.is_selected():
                box.click()
        driver.find_element(By.ID, "question").send_keys(QUESTION)
        driver.find_element(By.ID, "ask").click()
        WebDriverWait(driver, 300).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".chat-col[data-state=done]")) >= 2)
        shot("chat", "")
    finally:
        driver.quit()
        proc.terminate()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
