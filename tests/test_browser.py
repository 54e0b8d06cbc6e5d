"""A real browser (Debian's chromium, driven by Playwright) uses the app: type a prompt, press the button, wait for
both images and the measured readouts, save a screenshot.

    SNAPFUSION_APP_SCREENSHOT=docs/app_screenshot.png pytest tests/test_browser.py -m browser   # docs screenshot
    SNAPFUSION_TEACHER=bundle/teacher SNAPFUSION_STUDENT=bundle/student ...                      # on the bundle

Without SNAPFUSION_TEACHER / SNAPFUSION_STUDENT it runs on tiny models built in-process.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from test_app import launch, make_model_dirs

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
PROMPT = "a big red circle on the left, gray background"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    import app

    teacher, student = os.environ.get("SNAPFUSION_TEACHER"), os.environ.get("SNAPFUSION_STUDENT")
    if not (teacher and student):
        teacher, student = make_model_dirs(tmp_path_factory.mktemp("models"))
    demo = app.create_demo(teacher, student)
    yield launch(demo)
    demo.close()


def test_a_visitor_compares_both_sides_in_a_real_browser(url, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    shot = Path(os.environ.get("SNAPFUSION_APP_SCREENSHOT") or tmp_path / "app_screenshot.png")
    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            tempfile.mkdtemp(prefix="chromium_profile_"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 1280},
        )  # fmt: skip
        try:
            page = browser.new_page()
            page.goto(url, wait_until="networkidle")
            expect(page.get_by_text("How much faster?")).to_be_visible()
            expect(page.locator("#speedup")).to_contain_text("Press Generate both")
            page.locator("#prompt textarea").fill(PROMPT)
            page.locator("#generate").click()
            # the right side (8 steps) finishes first, then the left (50 steps); both readouts hold measurements
            for side in ("right", "left"):
                expect(page.locator(f"#{side}-image img")).to_be_visible(timeout=300_000)
                expect(page.locator(f"#{side}-readout")).to_contain_text("Measured on", timeout=300_000)
                expect(page.locator(f"#{side}-readout")).to_contain_text("ms/step")
            expect(page.locator("#speedup")).to_contain_text("Right side is", timeout=30_000)
            expect(page.locator("#speedup")).to_contain_text("UNet part")
            for side in ("left", "right"):
                width = page.locator(f"#{side}-image img").evaluate("img => img.naturalWidth")
                assert width >= 32, f"{side} image did not load (naturalWidth {width})"
            expect(page.locator("#prompt textarea")).to_have_value(PROMPT)
            page.mouse.move(0, 0)
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=False)
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
