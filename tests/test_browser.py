"""A real browser (Debian's chromium, driven by Playwright) uses the app: type a prompt, press the button, wait for
both images and the measured readouts, save a screenshot; put the one-pass student on the right; cancel a run; type
a number out of range.

    SNAPFUSION_APP_SCREENSHOT=docs/app_screenshot.png pytest tests/test_browser.py -m browser   # docs screenshot
    SNAPFUSION_TEACHER=bundle/teacher SNAPFUSION_STUDENT=bundle/student ...                      # on the bundle
    SNAPFUSION_ONEPASS=bundle/onepass ...                                                         # and its one-pass

Without SNAPFUSION_TEACHER / SNAPFUSION_STUDENT it runs on tiny models built in-process (with a tiny one-pass
student). Chromium: `apt-get install chromium` on Debian (what .ci/run does).
"""

from __future__ import annotations

import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from app_helpers import launch, make_model_dirs, make_onepass_dir

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
PROMPT = "a big red circle on the left, gray background"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    return make_model_dirs(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def url(model_dirs):
    import app

    teacher, student = os.environ.get("SNAPFUSION_TEACHER"), os.environ.get("SNAPFUSION_STUDENT")
    onepass = os.environ.get("SNAPFUSION_ONEPASS")
    if not (teacher and student):
        teacher, student = model_dirs
        onepass = make_onepass_dir(Path(teacher).parent)
    demo = app.create_demo(teacher, student, onepass=onepass)
    yield launch(demo), demo.snapfusion.models
    demo.close()


@pytest.fixture(scope="module")
def slow_url(model_dirs):
    """The app on the tiny models, the left side slowed to ~0.1 s per step: time to press Cancel mid-run."""
    import app

    demo = app.create_demo(*model_dirs, warmup=False)
    unet = demo.snapfusion.sides["left"].pipe.unet
    forward = unet.forward

    def slow_forward(*args, **kwargs):
        time.sleep(0.1)
        return forward(*args, **kwargs)

    unet.forward = slow_forward
    yield launch(demo)
    demo.close()


@contextmanager
def browser_page():
    with browser_pages(1) as pages:
        yield pages[0]


@contextmanager
def browser_pages(n: int):
    """``n`` pages, each in its own browser profile (its own gradio session); ``page.server_errors`` lists the
    responses with a 5xx status."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browsers = []
        try:
            pages = []
            for _ in range(n):
                browsers.append(p.chromium.launch_persistent_context(
                    tempfile.mkdtemp(prefix="chromium_profile_"), executable_path=CHROMIUM, headless=True,
                    args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 1280},
                ))  # fmt: skip
                page = browsers[-1].new_page()
                server_errors = []
                page.on("response", lambda r, e=server_errors: r.status >= 500 and e.append(f"{r.status} {r.url}"))
                page.server_errors = server_errors
                pages.append(page)
            yield pages
        finally:
            for browser in browsers:
                browser.close()


def test_a_visitor_compares_both_sides_in_a_real_browser(url, tmp_path):
    from playwright.sync_api import expect

    url, sides = url
    settings = {k: f"{s.default_steps} steps, CFG {s.default_guidance:g}" for k, s in sides.items()}

    shot = Path(os.environ.get("SNAPFUSION_APP_SCREENSHOT") or tmp_path / "app_screenshot.png")
    with browser_page() as page:
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
        expect(page.locator("#speedup")).to_contain_text(f"Right side ({settings['right']}) is", timeout=30_000)
        expect(page.locator("#speedup")).to_contain_text(f"than the left side ({settings['left']})")
        expect(page.locator("#speedup")).to_contain_text("UNet part")
        for side in ("left", "right"):
            width = page.locator(f"#{side}-image img").evaluate("img => img.naturalWidth")
            assert width >= 32, f"{side} image did not load (naturalWidth {width})"
        expect(page.locator("#prompt textarea")).to_have_value(PROMPT)
        page.mouse.move(0, 0)
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot), full_page=False)
        assert page.server_errors == []
    assert shot.stat().st_size > 10_000


def test_a_visitor_puts_the_one_pass_student_on_the_right(url):
    from playwright.sync_api import expect

    url, sides = url
    if "onepass" not in sides:
        pytest.skip("no one-pass student loaded (set SNAPFUSION_ONEPASS with SNAPFUSION_TEACHER / _STUDENT)")
    onepass = sides["onepass"]
    low, high = onepass.guidance_range
    with browser_page() as page:
        page.goto(url, wait_until="networkidle")
        box = page.locator("#right-guidance input[type=number]")
        box.fill("12")  # allowed for the SnapFusion student (CFG), outside the one-pass student's trained range
        box.press("Enter")
        expect(page.locator("#right-header")).to_contain_text("guidance 12")
        page.locator("#right-model").get_by_text("One-pass student").click()
        expect(page.locator("#right-header")).to_contain_text(f"One-pass student: {onepass.default_steps} steps")
        expect(box).to_have_value(f"{onepass.default_guidance:g}")
        time.sleep(1)
        expect(page.get_by_text("must be a number in")).to_have_count(0)  # the switch raised no error
        expect(page.locator("#right-guidance")).to_contain_text(f"trained on [{low:g}, {high:g}]")
        assert page.locator("#right-guidance input[type=number]").get_attribute("max") == f"{high:g}"
        expect(page.get_by_text("Not used by the one-pass student")).to_be_visible()
        page.locator("#generate").click()
        expect(page.locator("#right-readout")).to_contain_text("1 pass per step, guidance as input", timeout=300_000)
        expect(page.locator("#speedup")).to_contain_text(f"Right side ({onepass.default_steps} steps, guidance "
                                                         f"{onepass.default_guidance:g} as input) is",
                                                         timeout=300_000)  # fmt: skip
        expect(page.locator("#speedup")).to_contain_text("UNet evaluations per image")
        page.locator("#negative textarea").fill("blurry")
        page.locator("#generate").click()
        expect(page.get_by_text("a negative prompt has no effect on it")).to_be_visible(timeout=30_000)
        page.locator("#negative textarea").fill("")
        page.locator("#right-model").get_by_text("SnapFusion student").click()  # back: the student's controls
        student_steps = sides["right"].default_steps
        expect(page.locator("#right-header")).to_contain_text(f"SnapFusion student: {student_steps} steps")
        assert page.locator("#right-guidance input[type=number]").get_attribute("max") == "20"
        page.get_by_role("tab", name="Model").click()  # the one-pass student is the Totals table's third model
        totals = page.locator("#totals table").first
        expect(totals.locator("thead th").nth(3)).to_contain_text("one-pass:")
        width, visible = totals.evaluate("t => [t.scrollWidth, t.parentElement.clientWidth]")
        assert width <= visible, f"the Totals table needs a horizontal scroll ({width} > {visible} px)"
        assert page.server_errors == []


def test_cancel_during_generate_both_says_cancelled_on_the_page(slow_url):
    from playwright.sync_api import expect

    with browser_page() as page:
        page.goto(slow_url, wait_until="networkidle")
        page.locator("#generate").click()
        expect(page.locator("#left-readout")).to_contain_text("Running: step", timeout=120_000)
        expect(page.locator("#left-readout")).not_to_contain_text("step 0/", timeout=60_000)
        page.locator("#cancel").click()
        expect(page.locator("#speedup")).to_contain_text("Cancelled.", timeout=30_000)
        expect(page.locator("#speedup")).to_contain_text("The right side had finished")
        expect(page.locator("#speedup")).to_contain_text("the left side stopped at step")
        expect(page.locator("#left-readout")).to_contain_text("Cancelled at step")
        expect(page.locator("#right-readout")).to_contain_text("Measured on")  # the finished side keeps its result
        time.sleep(2)  # and it stays so: no late progress update overwrites it
        expect(page.locator("#left-readout")).to_contain_text("Cancelled at step")
        expect(page.locator("#speedup")).not_to_contain_text("still running")
        for box in ("#speedup", "#left-readout", "#right-readout"):
            expect(page.locator(box)).not_to_contain_text("Error")  # a cancelled run is not an error
        assert page.server_errors == []


def test_cancel_while_queued_drops_the_run(slow_url):
    """A visitor whose run waits in the queue (one generation at a time) presses Cancel: that run never starts."""
    from playwright.sync_api import expect

    with browser_pages(2) as (first, second):
        for page in (first, second):
            page.goto(slow_url, wait_until="networkidle")
        first.locator("#generate").click()
        expect(first.locator("#left-readout")).to_contain_text("Running: step", timeout=120_000)
        second.locator("#generate").click()
        expect(second.locator("#speedup")).to_contain_text("queue", timeout=30_000)
        second.locator("#cancel").click()
        expect(first.locator("#left-readout")).to_contain_text("Measured on", timeout=120_000)
        time.sleep(3)  # the queue is free: a run left in it would have started (the right side takes < 1 s)
        for box in ("#left-readout", "#right-readout"):
            expect(second.locator(box)).to_contain_text("latency readout appears here")
            expect(second.locator(box)).not_to_contain_text("Error")
        assert first.server_errors == second.server_errors == []


def test_a_number_out_of_range_gets_the_limits_not_a_server_error(slow_url, capfd):
    from playwright.sync_api import expect

    with browser_page() as page:
        page.goto(slow_url, wait_until="networkidle")
        box = page.locator("#right-steps input[type=number]")
        box.fill("500")
        box.press("Enter")
        expect(page.get_by_text("steps (right) must be an integer in [1, 100]; got 500.")).to_be_visible(
            timeout=30_000
        )
        expect(page.locator("#right-header")).to_contain_text("8 steps")  # the header keeps the last good value
        # Leaving the box, gradio's slider puts its own number back in range (its frontend clamps on blur) and
        # sends that value: the header follows what the box shows.
        box.blur()
        expect(box).to_have_value("100", timeout=30_000)
        expect(page.locator("#right-header")).to_contain_text("100 steps", timeout=30_000)
        time.sleep(1)
        assert page.server_errors == []
    assert "Traceback" not in capfd.readouterr().err
