"""The web console (GET /): its page and assets without a browser, then in headless Chromium driven by Selenium
against a real API and a real worker on the shipped weights: a frame detected and drawn, the confidence slider
filtering without a new request, the Grad-CAM overlay, a video job to its annotated MP4, and the key prompt.

The browser tests need Debian's `chromium` and `chromium-driver` (scripts/test.sh installs them) and fail, rather
than skip, without them. With MASENET_CONSOLE_SCREENSHOT=docs/console.png the frame test saves a screenshot.
Redis is the local server, database 3, flushed when the module ends.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from PIL import Image

from model.checkpoint import default_weights_path
from service.app import create_app
from tests.service.helpers import ApiProcess, WorkerProcess, make_settings, new_prefix
from tests.synthetic_video import write_test_video
from tools.cameras import CameraScene, MjpegCamera
from tools.launch import child_env

REDIS_URL = "redis://127.0.0.1:6379/3"
PREFIX = new_prefix()
KEY = "k1"
BOX_RGB = (57, 255, 122)  # class 0's colour in frames.js
WAIT_S = 60.0
VIDEO_WAIT_S = 240.0
ASSET = re.compile(r"""(?:src|href)="(/console/[^"]+)\"""")
THUMBNAILS = "document.querySelectorAll('[data-testid=\"frame-strip\"] button')"
MODULE_IMPORT = re.compile(r"""from "\./([\w.-]+)";""")


# ------------------------------------------------------------------------------------------ without a browser


@pytest.fixture(scope="module")
def app_client() -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(new_prefix(), redis_url=REDIS_URL, api_keys=(KEY,)))) as client:
        yield client


def console_files(client: TestClient) -> dict[str, Any]:
    """Every file the page loads, following the scripts' imports: {path: response}."""
    page = client.get("/")
    found = {"/": page}
    pending = ASSET.findall(page.text)
    while pending:
        path = pending.pop()
        if path in found:
            continue
        found[path] = client.get(path)
        if path.endswith(".js"):
            pending += [f"/console/{name}" for name in MODULE_IMPORT.findall(found[path].text)]
    return found


def test_the_page_and_its_assets_come_from_the_service_alone(app_client: TestClient) -> None:
    files = console_files(app_client)
    assert {"/", "/console/console.css", "/console/console.js", "/console/frames.js", "/console/api.js"} <= set(files)
    kinds = {".css": "text/css", ".js": "text/javascript", "/": "text/html"}
    for path, response in files.items():
        assert response.status_code == 200, path
        expected = next(kind for suffix, kind in kinds.items() if path.endswith(suffix))
        assert response.headers["content-type"].split(";")[0] == expected, path
        assert "http://" not in response.text and "https://" not in response.text, f"{path} names another origin"
        assert response.headers["x-content-type-options"] == "nosniff"
    policy = files["/"].headers["content-security-policy"]
    assert "default-src 'self'" in policy and "unsafe-inline" not in policy
    assert "<script>" not in files["/"].text and " style=" not in files["/"].text, "inline code is refused by the CSP"
    for marker in ('data-testid="detection-count"', 'data-testid="overlay"', 'data-testid="job-progress"'):
        assert marker in files["/"].text
    on_disk = sorted(path.name for path in (Path(__file__).parents[2] / "service" / "console").iterdir())
    assert sorted(["index.html"] + [path.rsplit("/", 1)[1] for path in files if path != "/"]) == on_disk


def test_the_page_needs_no_key_but_the_data_does(app_client: TestClient) -> None:
    assert app_client.get("/").status_code == 200
    assert app_client.get("/console/console.js").status_code == 200
    refused = app_client.post("/detect", files={"image": ("a.png", b"png")})
    assert refused.status_code == 401 and "key" in refused.json()["detail"]
    assert "/" not in app_client.get("/openapi.json").json()["paths"]


def test_only_the_console_files_are_served(app_client: TestClient) -> None:
    for path in ("/console/missing.js", "/console/..%2Fapp.py", "/console/index.htm", "/console/"):
        answer = app_client.get(path)
        assert answer.status_code == 404, path
    assert "no file" in app_client.get("/console/missing.js").json()["detail"]


# ------------------------------------------------------------------------------------------------ in a browser


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A worker on the shipped weights, an API without keys and one with MASENET_API_KEYS=k1, on one queue."""
    folder = tmp_path_factory.mktemp("console")
    env = {
        "MASENET_REDIS_URL": REDIS_URL,
        "MASENET_QUEUE_PREFIX": PREFIX,
        "MASENET_STORAGE": str(folder / "storage"),
        "MASENET_STREAM_ALLOW": "127.0.0.1",
        "MASENET_DRAIN_S": "0",  # nothing balances load here: stop at once
    }
    connection = redis.Redis.from_url(REDIS_URL)
    try:
        connection.ping()
    except redis.RedisError as exc:
        pytest.fail(f"these tests need a Redis server at {REDIS_URL} ({exc})")
    worker = WorkerProcess(PREFIX, default_weights_path(), folder / "worker.log", **env, MASENET_IMGSZ=None)
    apis: list[ApiProcess] = []
    try:
        worker.start().wait_for(connection, "ready")
        apis.append(ApiProcess(child_env(env), folder / "api.log").start())
        apis.append(ApiProcess(child_env({**env, "MASENET_API_KEYS": KEY}), folder / "api-keys.log").start())
        yield {"open": apis[0].url, "keyed": apis[1].url}
    finally:
        for api in apis:
            api.stop()
        worker.stop()
        connection.flushdb()
        connection.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    missing = [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]
    if missing:
        pytest.fail(
            f"{' and '.join(missing)} not on PATH: install the Debian packages chromium and chromium-driver "
            "(scripts/test.sh does)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1050"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=shutil.which("chromedriver")))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The fake camera's frame 0 (two targets the shipped model finds) as an 8-bit PNG and as a 16-bit TIFF."""
    folder = tmp_path_factory.mktemp("frames")
    picture = CameraScene().frame(0)
    Image.fromarray(picture).save(folder / "scene.png")
    deep = picture[..., 0].astype(np.uint16) * 250 + 500
    Image.fromarray(deep).save(folder / "scene-16bit.tif")
    return [folder / "scene.png", folder / "scene-16bit.tif"]


def wait_for(condition: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")


def text(driver: Any, testid: str) -> str:
    return driver.execute_script(f"return document.querySelector('[data-testid=\"{testid}\"]').textContent.trim()")


def shown(driver: Any, testid: str) -> bool:
    return driver.execute_script(f"return !document.querySelector('[data-testid=\"{testid}\"]').closest('[hidden]')")


def element(driver: Any, testid: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, f'[data-testid="{testid}"]')


def detect_requests(driver: Any) -> int:
    return driver.execute_script(
        "return performance.getEntriesByType('resource').filter(e => new URL(e.name).pathname === '/detect').length"
    )


def canvas_pixels(driver: Any) -> dict[str, Any]:
    """The overlay's size, a checksum of its pixels and how many are the box colour."""
    return driver.execute_script(
        """
        const canvas = document.querySelector('[data-testid="overlay"]');
        const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        const [r, g, b] = arguments[0];
        let boxed = 0, sum = 0, lit = 0;
        for (let i = 0; i < data.length; i += 4) {
          if (Math.abs(data[i] - r) < 12 && Math.abs(data[i + 1] - g) < 12 && Math.abs(data[i + 2] - b) < 12) boxed++;
          if (data[i] + data[i + 1] + data[i + 2] > 30) lit++;
          sum = (sum * 31 + data[i] + 7 * data[i + 1] + 13 * data[i + 2]) % 1000000007;
        }
        return {width: canvas.width, height: canvas.height, boxed, lit, sum, layer: canvas.dataset.layer};
        """,
        list(BOX_RGB),
    )


def set_slider(driver: Any, value: float) -> None:
    driver.execute_script(
        "const s = arguments[0]; s.value = arguments[1]; s.dispatchEvent(new Event('input', {bubbles: true}));",
        element(driver, "conf-slider"),
        str(value),
    )


def media_state(driver: Any) -> tuple[int, int | None]:
    """The annotated video element's readyState and media error code (None without an error)."""
    state = driver.execute_script(
        "const video = document.querySelector('[data-testid=\"job-video\"]');"
        "return [video.readyState, video.error && video.error.code];"
    )
    return state[0], state[1]


def severe_logs(driver: Any) -> list[dict]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def open_console(driver: Any, url: str) -> None:
    driver.get(url)
    driver.get_log("browser")  # start each test's console log afresh


def test_a_frame_is_detected_drawn_filtered_and_explained(
    stack: dict[str, str], browser: Any, frames: list[Path]
) -> None:
    open_console(browser, stack["open"])
    wait_for(lambda: "masenet-n" in text(browser, "model-panel"), "the model panel")
    element(browser, "frame-input").send_keys("\n".join(str(path) for path in frames))
    wait_for(lambda: canvas_pixels(browser)["layer"] == "frame", "the first frame drawn")
    assert text(browser, "detection-count") == "2", "the shipped model finds both targets at conf 0.25"
    drawn = canvas_pixels(browser)
    assert (drawn["width"], drawn["height"]) == (640, 512), "320x256 drawn twice as large"
    assert drawn["lit"] > 0.9 * drawn["width"] * drawn["height"], "the frame itself is drawn"
    assert drawn["boxed"] >= 2 * 4 * 40, "two boxes at least 14 frame pixels wide, 2 px lines in the box colour"

    asked = detect_requests(browser)
    set_slider(browser, 0.99)
    wait_for(lambda: text(browser, "detection-count") == "0", "the slider to hide every detection")
    assert canvas_pixels(browser)["boxed"] < drawn["boxed"] / 10
    set_slider(browser, 0.25)
    wait_for(lambda: text(browser, "detection-count") == "2", "the slider to show them again")
    assert detect_requests(browser) == asked, "the slider filters without a new request"

    element(browser, "gradcam-toggle").click()
    wait_for(lambda: canvas_pixels(browser)["layer"] == "gradcam", "the Grad-CAM overlay")
    overlaid = canvas_pixels(browser)
    assert overlaid["sum"] != drawn["sum"] and overlaid["boxed"] > 0, "the heat map under the same boxes"
    assert detect_requests(browser) == asked + 1, "one Grad-CAM request, kept for the frame"

    assert browser.execute_script(f"return {THUMBNAILS}.length") == 2
    browser.execute_script(f"{THUMBNAILS}[1].click()")  # the 16-bit TIFF: shown as the service's 8-bit preview
    wait_for(lambda: canvas_pixels(browser)["layer"] == "gradcam", "the TIFF's Grad-CAM overlay")
    assert text(browser, "detection-count") == "2"
    browser.execute_script(f"{THUMBNAILS}[0].click()")
    wait_for(lambda: canvas_pixels(browser)["sum"] == overlaid["sum"], "the first frame's cached overlay")
    assert detect_requests(browser) == asked + 2
    screenshot = os.environ.get("MASENET_CONSOLE_SCREENSHOT")
    if screenshot:
        wait_for(lambda: "ready" in text(browser, "readiness"), "the health badge")
        browser.save_screenshot(screenshot)
    assert severe_logs(browser) == []


def test_a_video_job_runs_to_its_annotated_mp4(stack: dict[str, str], browser: Any, tmp_path: Path) -> None:
    video = write_test_video(tmp_path / "clip.mp4", frames=48)
    open_console(browser, stack["open"])
    browser.execute_script("document.querySelector('[data-tab=\"video\"]').click()")
    assert element(browser, "annotate-toggle").is_selected()
    element(browser, "video-input").send_keys(str(video))
    wait_for(lambda: text(browser, "job-progress-text") == "100 %", "the job to finish", VIDEO_WAIT_S)
    assert element(browser, "job-progress").get_attribute("value") == "100"
    assert element(browser, "upload-progress").get_attribute("value") == "100"
    wait_for(lambda: (element(browser, "job-video").get_attribute("src") or "").startswith("blob:"), "the MP4")
    assert "finished" in text(browser, "job-status") and "48 processed" in text(browser, "job-status")
    assert element(browser, "job-frame").get_attribute("max") == "47"
    wait_for(lambda: media_state(browser) != (0, None), "the MP4's metadata or a media error")
    assert media_state(browser)[1] is None, f"the browser cannot play the annotated MP4: {media_state(browser)}"
    browser.execute_script(
        "const s = arguments[0]; s.value = '10'; s.dispatchEvent(new Event('input'));", element(browser, "job-frame")
    )
    assert text(browser, "job-frame-meta").startswith("frame 10 at 0.40 s")
    assert severe_logs(browser) == []


def test_a_stream_is_started_watched_and_stopped(stack: dict[str, str], browser: Any) -> None:
    open_console(browser, stack["open"])
    browser.execute_script("document.querySelector('[data-tab=\"streams\"]').click()")
    with MjpegCamera(CameraScene(), fps=10) as camera:
        element(browser, "stream-url").send_keys(camera.url)
        element(browser, "stream-start").click()
        wait_for(lambda: "running" in text(browser, "stream-rows"), "the stream running in the list")
        wait_for(lambda: (element(browser, "snapshot").get_attribute("src") or "").startswith("blob:"), "a snapshot")
        assert browser.execute_script("return document.querySelector('[data-testid=\"snapshot\"]').naturalWidth") == 320
        wait_for(lambda: re.search(r"[1-9][\d.]* frame events/s", text(browser, "stream-watch")), "the event rate")
        browser.execute_script("[...document.querySelectorAll('#stream-rows button')].at(-1).click()")
        wait_for(lambda: "stopped" in text(browser, "stream-rows"), "the stream stopped")
    not_ready = [entry for entry in severe_logs(browser) if "409" not in entry["message"]]
    assert not_ready == [], "only 'no frame processed yet' answers, before the first snapshot"


def test_with_keys_on_the_page_asks_for_one_and_uses_it(
    stack: dict[str, str], browser: Any, frames: list[Path]
) -> None:
    open_console(browser, stack["keyed"])
    wait_for(lambda: shown(browser, "auth-form"), "the key prompt")
    element(browser, "frame-input").send_keys(str(frames[0]))
    wait_for(lambda: "needs an API key" in text(browser, "frame-meta"), "the frame's 401, with its detail")
    assert "Authorization: Bearer" in text(browser, "auth-form"), "the prompt says what the service asked for"
    assert text(browser, "detection-count") == "0"
    element(browser, "api-key").send_keys(KEY + "\n")
    wait_for(lambda: text(browser, "detection-count") == "2", "the frame detected once the key is given")
    assert not shown(browser, "auth-form")
    assert browser.execute_script("return [sessionStorage.getItem('masenet.apiKey'), localStorage.length]") == [KEY, 0]
    wait_for(lambda: "masenet-n" in text(browser, "model-panel"), "the model panel with the key")
    refused = [entry for entry in severe_logs(browser) if "401" not in entry["message"]]
    assert refused == []
