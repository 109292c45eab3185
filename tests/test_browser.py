"""The page of ``dml-csr serve`` in a real browser: headless Chromium driven by Selenium through the
system's chromedriver (never Selenium Manager: nothing is downloaded), against the real server on
a free port with a tiny parser whose label maps follow the photo's colours.

Skipped, with the reason, where Selenium, Chromium or chromedriver is missing, unless
``DMLCSR_REQUIRE_BROWSER=1`` (what .ci/run sets after scripts/install_browser.sh): then it fails,
so CI cannot skip it silently."""
import base64
import os
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from dml_csr.cli import env_flag
from dml_csr.deploy import draw_overlay
from dml_csr.files import read_image
from test_api import _colour_parser

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "tests" / "data" / "photos" / "astronaut.jpg"
REQUIRE_ENV = "DMLCSR_REQUIRE_BROWSER"
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
WAIT = 30


def _browser_paths():
    """(chromium, chromedriver, reasons they cannot be used)."""
    reasons = []
    for module in ("selenium", "starlette", "uvicorn", "python_multipart"):
        try:
            __import__(module)
        except ImportError:
            reasons.append(f"the Python package {module} is not installed")
    browser = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    driver = shutil.which("chromedriver")
    if browser is None:
        reasons.append("no Chromium (chromium, chromium-browser or google-chrome on PATH)")
    if driver is None:
        reasons.append("no chromedriver on PATH")
    return browser, driver, reasons


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    browser, driver_path, reasons = _browser_paths()
    if reasons:
        message = ("the browser test cannot run: " + "; ".join(reasons)
                   + " (bash scripts/install_browser.sh installs Chromium and chromedriver)")
        if env_flag(REQUIRE_ENV):
            pytest.fail(f"{REQUIRE_ENV}=1, but {message}")
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    os.environ["SE_OFFLINE"] = "true"          # Selenium Manager must never download anything
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1200,900", "--no-first-run", "--disable-extensions",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-default-apps",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    chrome = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    chrome.set_script_timeout(WAIT)
    yield chrome
    chrome.quit()


@pytest.fixture(scope="module")
def server():
    from dml_csr.serve.app import build_app
    from dml_csr.serve.server import RunningServer
    with RunningServer(build_app(_colour_parser(), max_pixels=2_000_000)) as running:
        yield running


def _wait(chrome, condition, what):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(chrome, WAIT).until(lambda d: condition(d), message=f"waiting for {what}")


def _canvas_rgb(chrome, script, *args):
    """uint8 (h, w, 3) RGB of a PNG data URL returned by ``script``."""
    url = chrome.execute_script(script, *args)
    png = base64.b64decode(url.split(",", 1)[1])
    return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]


OVERLAY = "return arguments[0].toDataURL('image/png');"
IMAGE = """
const img = arguments[0];
const c = document.createElement('canvas');
c.width = img.naturalWidth; c.height = img.naturalHeight;
c.getContext('2d').drawImage(img, 0, 0);
return c.toDataURL('image/png');
"""


def test_the_page_parses_a_photo_toggles_classes_and_previews_masks(driver, server, tmp_path):
    from selenium.webdriver.common.by import By
    chrome = driver
    chrome.get(server.url + "/")
    _wait(chrome, lambda d: "helen labels" in d.find_element(By.ID, "model-info").text,
          "the model facts")
    chrome.find_element(By.ID, "file-input").send_keys(str(PHOTO))
    card = _wait(chrome, lambda d: d.find_element(By.CSS_SELECTOR, ".result[data-state=done]"),
                 "the parsed photo")
    assert card.find_element(By.CSS_SELECTOR, ".faces-count").text == "1 face"
    seconds = card.find_element(By.CSS_SELECTOR, ".seconds").text
    assert seconds.endswith(" s") and 0 < float(seconds[:-2]) < 60

    # the overlay drawn in the page is the server's draw_overlay of the same photo (the
    # browser's JPEG decoder may differ from OpenCV's by a level or two)
    photo = read_image(PHOTO)
    ref = _colour_parser()(photo, detect=False)
    labels = ref.combined[0]
    canvas = card.find_element(By.CSS_SELECTOR, "canvas.overlay")
    shown = _canvas_rgb(chrome, OVERLAY, canvas).astype(int)
    expected = draw_overlay(photo, labels, ref.class_names, ref.palette, legend=False)[:, :, ::-1]
    assert shown.shape == expected.shape == (256, 256, 3)
    assert np.abs(shown - expected.astype(int)).mean() < 3

    # untick the largest class: its pixels show the bare photo, the others keep their colour
    toggles = card.find_elements(By.CSS_SELECTOR, ".class-toggle input")
    present = sorted(int(t.get_attribute("data-class-id")) for t in toggles)
    assert present == sorted(int(c) for c in np.unique(labels) if c)
    big = max(present, key=lambda c: (labels == c).sum())
    version = canvas.get_attribute("data-version")
    card.find_element(By.CSS_SELECTOR, f".class-toggle input[data-class-id='{big}']").click()
    _wait(chrome, lambda d: canvas.get_attribute("data-version") != version,
          "the recoloured overlay")
    after = _canvas_rgb(chrome, OVERLAY, canvas).astype(int)
    bare, rest = labels == big, (labels != big) & (labels > 0)
    rgb = photo[:, :, ::-1].astype(int)
    assert np.abs(shown - rgb)[bare].mean() > 10            # it was coloured
    assert np.abs(after - rgb)[bare].mean() < 3             # now it is the photo
    assert np.abs(after - shown)[rest].mean() < 1           # the rest did not change

    # the mask panel: a class, then grow, then feather; each preview is /mask's answer
    preview = card.find_element(By.CSS_SELECTOR, "img.mask-preview")

    def mask_after(action, what):
        old = preview.get_attribute("data-version")
        action()
        _wait(chrome, lambda d: preview.get_attribute("data-version") not in (None, old), what)
        return _canvas_rgb(chrome, IMAGE, preview)[:, :, 0]

    def type_into(selector, text):
        box = card.find_element(By.CSS_SELECTOR, selector)
        box.clear()
        box.send_keys(text)

    name = ref.class_names[big]
    mask = mask_after(lambda: card.find_element(
        By.CSS_SELECTOR, f".mask-classes input[value='{name}']").click(), "the mask preview")
    np.testing.assert_array_equal(mask, ref.mask(0, name))
    grown = mask_after(lambda: type_into("input.grow", "6"), "the grown mask")
    np.testing.assert_array_equal(grown, ref.mask(0, name, grow=6))
    assert (grown > 0).sum() > (mask > 0).sum()
    soft = mask_after(lambda: type_into("input.feather", "8"), "the feathered mask")
    np.testing.assert_array_equal(soft, ref.mask(0, name, grow=6, feather=8))
    assert ((soft > 0) & (soft < 255)).any()
    for link in ("label-map", "overlay", "mask", "json"):
        href = card.find_element(By.CSS_SELECTOR, f"a.download-{link}").get_attribute("href")
        assert href and href.startswith("blob:"), link

    # a broken file: the server's reason on the page, and the page goes on
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(PHOTO.read_bytes()[:5000])
    chrome.find_element(By.ID, "file-input").send_keys(str(cut))
    failed = _wait(chrome, lambda d: d.find_element(By.CSS_SELECTOR, ".result[data-state=error]"),
                   "the error of a truncated photo")
    error = failed.find_element(By.CSS_SELECTOR, ".result-error").text
    assert "cut.jpg" in error and "truncated" in error and "HTTP 400" in error
    chrome.find_element(By.ID, "file-input").send_keys(str(PHOTO))
    deadline = time.monotonic() + WAIT
    while len(chrome.find_elements(By.CSS_SELECTOR, ".result[data-state=done]")) < 2:
        assert time.monotonic() < deadline, "the photo after the error was not parsed"
        time.sleep(0.1)
