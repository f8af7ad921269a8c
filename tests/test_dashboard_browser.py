"""The dashboard in a real headless Chromium (Debian's chromium + chromium-driver, driven by Selenium).

A collector with the default alert rules serves it while demo-like traffic
flows. The screenshot is left in $TEST_ARTIFACTS_DIR (default: the test's
tmp dir) as dashboard.png.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import pytest

from emitters import Emitter
from tests.support.live_view import LiveProcess

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

pytestmark = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
    reason="needs Debian's chromium and chromium-driver (.ci/run installs them)",
)


def _generation(emitter: Emitter, request_id: str, model: str, ttft_ms: float) -> None:
    emitter.generation_started(model, request_id, prompt_tokens=12, max_tokens=8)
    for index, token in enumerate(("Hello", " there", "!")):
        emitter.token_generated(model, request_id, token, index)
    emitter.generation_completed(model, request_id, 12, 3, ttft_ms * 4, ttft_ms=ttft_ms, finish_reason="stop")


class DemoTraffic:
    """An engine and a gateway, a generation every 100 ms, until stopped."""

    def __init__(self, redis_url: str) -> None:
        self.engine = Emitter("mlx-engine", redis_url, strict=True)
        self.gateway = Emitter("gateway", redis_url, strict=True)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        count = 0
        while not self.stop.wait(0.1):
            count += 1
            request_id = f"bg-{count}"
            self.gateway.event("request.received", request_id=request_id, route="/v1/chat/completions")
            _generation(self.engine, request_id, "tiny-llama" if count % 3 else "tiny-qwen", 20.0 + count % 7 * 15)
            if count % 10 == 0:
                self.engine.runtime_status("busy", 2, active_tasks=1, memory_gb=0.8)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.engine.close()
        self.gateway.close()


@pytest.fixture
def browser() -> Iterator["object"]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,2600"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_dashboard_follows_traffic_shows_timeline_errors_and_alerts(redis_url: str, tmp_path: Path, browser: object) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    live = LiveProcess.collector(redis_url, tmp_path)
    traffic = DemoTraffic(redis_url)
    try:
        traffic.engine.runtime_status("ready", 2, active_tasks=0, memory_gb=0.7)
        silence = subprocess.run(
            [sys.executable, "-m", "collector", "alerts", "silence", "--redis-url", redis_url,
             "--matcher", "rule=service-errors", "--for", "1h", "--comment", "deploy window"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert silence.returncode == 0, silence.stderr
        with traffic.gateway.context(request_id="req-broken"):
            traffic.gateway.event("request.received", route="/v1/chat/completions")
            try:
                raise ValueError("tokenizer rejected input 42")
            except ValueError as exc:
                traffic.engine.error(exc, request_id="req-broken", model="tiny-llama")
        traffic.engine.flush()
        traffic.gateway.flush()
        traffic.thread.start()
        wait = WebDriverWait(driver, 30, poll_frequency=0.2)
        driver.get(live.url + "/")  # type: ignore[attr-defined]
        wait.until(seen.text_to_be_present_in_element((By.ID, "tail-state"), "following"))

        # The live tail shows an event emitted after the page opened.
        traffic.gateway.event("deploy.finished", request_id="req-after-load", version="1.2.3")
        wait.until(seen.presence_of_element_located((By.CSS_SELECTOR, "#tail-list li[data-type='deploy.finished']")))

        # The timeline of a request id, across both services, in order.
        field = driver.find_element(By.ID, "timeline-input")  # type: ignore[attr-defined]
        field.clear()
        field.send_keys("req-broken")
        driver.find_element(By.ID, "timeline-go").click()  # type: ignore[attr-defined]
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#timeline-table tbody tr")) == 3)
        rows = driver.find_elements(By.CSS_SELECTOR, "#timeline-table tbody tr")  # type: ignore[attr-defined]
        assert "request.received" in rows[0].text and "gateway" in rows[0].text
        assert "error" in rows[1].text and "mlx-engine" in rows[1].text and "ValueError" in rows[1].text
        assert "error" in rows[1].get_attribute("class")
        assert "span.ended" in rows[2].text and "gateway" in rows[2].text  # the request's scope closed
        assert "3 events" in driver.find_element(By.ID, "timeline-summary").text  # type: ignore[attr-defined]

        # The error group and the alert its new fingerprint fired.
        wait.until(seen.text_to_be_present_in_element((By.ID, "errors-table"), "tokenizer rejected input 42"))
        wait.until(seen.presence_of_element_located((By.CSS_SELECTOR, "#alerts-table tr.firing")))
        assert "new-error-kind" in driver.find_element(By.CSS_SELECTOR, "#alerts-table tr.firing").text  # type: ignore[attr-defined]
        wait.until(seen.text_to_be_present_in_element((By.ID, "silences-table"), "deploy window"))
        assert "rule=service-errors" in driver.find_element(By.ID, "silences-table").text  # type: ignore[attr-defined]

        # Charts and tables filled from the same traffic.
        wait.until(seen.text_to_be_present_in_element((By.ID, "engines-table"), "mlx-engine"))
        wait.until(lambda d: "tiny-llama" in d.find_element(By.ID, "chart-ttft").text)
        assert driver.find_elements(By.CSS_SELECTOR, "#chart-events svg path")  # type: ignore[attr-defined]

        # Live tokens from the pub/sub channel when asked for.
        driver.find_element(By.ID, "tail-live").click()  # type: ignore[attr-defined]
        driver.find_element(By.CSS_SELECTOR, "#tail-form button").click()  # type: ignore[attr-defined]
        wait.until(seen.presence_of_element_located((By.CSS_SELECTOR, "#tail-list li.live")))

        artefacts = Path(os.environ.get("TEST_ARTIFACTS_DIR", tmp_path))
        artefacts.mkdir(parents=True, exist_ok=True)
        driver.execute_script("window.scrollTo(0, 0)")  # type: ignore[attr-defined]
        assert driver.save_screenshot(str(artefacts / "dashboard.png"))  # type: ignore[attr-defined]
    finally:
        traffic.close()
        live.stop()
