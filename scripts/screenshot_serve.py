"""A screenshot of the page of ``dml-csr serve`` with a parsed photo: docs/images/serve_page.png.

    python scripts/screenshot_serve.py [--checkpoint runs/quickstart/best.pth]
        [--photo tests/data/photos/astronaut.jpg] [--mask inner_face] [--grow 4] [--feather 6]
        [--hide CLASS ...] [--window 1200x1000] [--out docs/images/serve_page.png]

Starts the server on a free port of the loopback (the command's parser options: the default
detector, one pass), opens the page in headless Chromium (the system's chromium and chromedriver,
as tests/test_browser.py; scripts/install_browser.sh installs them; nothing is downloaded),
uploads the photo through the file input, ticks the ``--mask`` classes in the mask panel, sets
grow and feather, unticks the ``--hide`` classes in the overlay, waits for the mask preview and
saves the page's top ``--window`` pixels as a PNG (``dml_csr.files.write_bytes``; re-encoded at
zlib level 9 when that is smaller).
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

WAIT = 120


def chromium(window, profile):
    """Headless Chromium through the system's chromedriver (Selenium Manager never runs)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    browser = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")
                    if shutil.which(b)), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        raise SystemExit("error: needs chromium and chromedriver on PATH "
                         "(bash scripts/install_browser.sh)")
    os.environ["SE_OFFLINE"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 f"--window-size={window[0]},{window[1]}", "--hide-scrollbars",
                 "--force-device-scale-factor=1", "--no-first-run", "--disable-extensions",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-default-apps", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default=os.path.join(REPO, "runs", "quickstart", "best.pth"))
    ap.add_argument("--photo", default=os.path.join(REPO, "tests", "data", "photos",
                                                    "astronaut.jpg"))
    ap.add_argument("--mask", nargs="+", default=["inner_face"],
                    help="mask names ticked in the mask panel")
    ap.add_argument("--grow", type=int, default=4)
    ap.add_argument("--feather", type=int, default=6)
    ap.add_argument("--hide", nargs="*", default=[],
                    help="class names unticked in the overlay's toggles")
    ap.add_argument("--window", default="1200x1000", help="WxH")
    ap.add_argument("--out", default=os.path.join(REPO, "docs", "images", "serve_page.png"))
    args = ap.parse_args(argv)
    window = tuple(int(v) for v in args.window.lower().split("x"))

    import cv2
    import numpy as np
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from dml_csr.commands.infer import parser_from_args
    from dml_csr.commands.serve import parse_args
    from dml_csr.files import write_bytes
    from dml_csr.serve.app import build_app
    from dml_csr.serve.server import RunningServer

    parser = parser_from_args(parse_args(["--checkpoint", args.checkpoint]))
    profile = tempfile.mkdtemp(prefix="screenshot_serve_")
    try:
        with RunningServer(build_app(parser)) as server:
            chrome = chromium(window, profile)
            try:
                chrome.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
                    "width": window[0], "height": window[1], "deviceScaleFactor": 1,
                    "mobile": False})
                wait = WebDriverWait(chrome, WAIT)
                chrome.get(server.url + "/")
                wait.until(lambda d: "labels" in d.find_element(By.ID, "model-info").text)
                chrome.find_element(By.ID, "file-input").send_keys(os.path.abspath(args.photo))
                card = wait.until(lambda d: d.find_element(By.CSS_SELECTOR,
                                                           ".result[data-state=done]"))
                for name in args.hide:
                    for box in card.find_elements(By.CSS_SELECTOR, ".class-toggle input"):
                        if box.get_attribute("data-class-name") == name:
                            box.click()
                for name in args.mask:
                    card.find_element(By.CSS_SELECTOR,
                                      f".mask-classes input[value='{name}']").click()
                for selector, value in ((".grow", args.grow), (".feather", args.feather)):
                    box = card.find_element(By.CSS_SELECTOR, f"input{selector}")
                    box.clear()
                    box.send_keys(str(value))
                preview = card.find_element(By.CSS_SELECTOR, "img.mask-preview")
                want = f"grow={args.grow}&feather={args.feather}"
                wait.until(lambda d: want in (preview.get_attribute("data-query") or "")
                           and preview.get_attribute("data-version"))
                chrome.execute_script("document.activeElement.blur(); window.scrollTo(0, 0);")
                time.sleep(0.3)                      # the last repaint
                png = chrome.get_screenshot_as_png()
            finally:
                chrome.quit()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    data = min(png, buf.tobytes(), key=len)
    write_bytes(args.out, data)
    print(f"wrote {args.out}: {image.shape[1]}x{image.shape[0]}, {len(data) // 1024} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
