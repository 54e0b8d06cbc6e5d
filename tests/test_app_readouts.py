"""snapfusion_app/readouts.py: the banner, readouts and headers rendered from timings (pure functions)."""

from __future__ import annotations

import re

import pytest

from snapfusion_app import readouts


def t(total, unet, steps, cfg=True, guidance=7.5):
    return {"total_ms": total, "unet_ms_total": unet, "steps_run": steps, "device": "cpu", "cfg": cfg,
            "guidance": guidance}  # fmt: skip


def head_of(banner: str) -> str:
    return re.search(r"font-weight:700;color:#\w+'>(.*?)</div>", banner).group(1)


def test_banner_says_faster_or_slower_with_the_one_right_number():
    faster = readouts.speedup_html(t(1000.0, 900.0, 50), t(100.0, 90.0, 8, guidance=4.5))
    assert head_of(faster) == "Right side (8 steps, CFG 4.5) is 10× faster than the left side (50 steps, CFG 7.5)"
    assert "UNet part 10× faster" in faster and "#16a34a" in faster and "slower" not in faster
    slower = readouts.speedup_html(t(100.0, 60.0, 50), t(170.0, 120.0, 8, guidance=4.5))
    assert head_of(slower) == "Right side (8 steps, CFG 4.5) is 1.7× slower than the left side (50 steps, CFG 7.5)"
    assert "UNet part 2.0× slower" in slower and "#d97706" in slower and "faster" not in slower


def test_banner_of_a_4_step_no_cfg_run_against_a_50_step_cfg_run_names_both_settings():
    """The newcomer saw "Right side is 60× faster" for 4 steps without CFG against 50 steps with CFG."""
    banner = readouts.speedup_html(t(3000.0, 2900.0, 50), t(50.0, 40.0, 4, cfg=False, guidance=1.0),
                                   note="The two sides were run separately.")  # fmt: skip
    assert head_of(banner) == "Right side (4 steps, no CFG) is 60× faster than the left side (50 steps, CFG 7.5)"
    assert "UNet part 72× faster (50 steps: 2,900 ms → 4 steps: 40 ms)" in banner
    assert "The two sides were run separately." in banner


@pytest.mark.parametrize("ratio, text", [(7.94, "7.9× faster"), (10.4, "10× faster"), (1.0, "1.0× faster"),
                                         (0.5, "2.0× slower"), (float("nan"), "not comparable"),
                                         (0.0, "not comparable")])  # fmt: skip
def test_ratio_words(ratio, text):
    assert readouts.ratio_text(ratio) == text


def test_cancelled_readouts_and_banner():
    assert readouts.cancelled_markdown(11, 50) == "**Cancelled at step 11/50**: no image, no timings."
    assert readouts.cancelled_markdown(None, 50) == "**Cancelled** before this side ran: no image, no timings."
    banner = readouts.cancelled_html("The left side stopped at step 11/50.")
    assert "Cancelled." in banner and "step 11/50" in banner and "faster" not in banner


def test_truncation_note_quotes_the_ignored_text_escaped():
    note = readouts.truncation_note("Negative prompt", 24, 3, "a <b>bold</b> square")
    assert note == ("Negative prompt truncated: this text encoder reads 24 tokens; the last 3 tokens were ignored "
                    "(text from: “a &lt;b&gt;bold&lt;/b&gt; square”).")  # fmt: skip
    assert readouts.truncation_note("Prompt", 16, 2, "") == (
        "Prompt truncated: this text encoder reads 16 tokens; the last 2 tokens were ignored."
    )


def test_readout_table_and_progress():
    timings = dict(t(1234.0, 1000.0, 4), text_encoder_ms=12.34, unet_ms_mean=250.0, decoder_ms=50.0)
    text = readouts.readout_markdown(timings, 7.5, "cpu (2 cores)", ["Empty prompt."])
    assert text.splitlines()[0] == "**4 steps · guidance 7.5** · 1,234 ms in total"
    assert "| UNet | 250.0 ms/step × 4 steps = 1,000 ms (CFG: 2 passes per step, one batch of 2) |" in text
    assert "UNet evaluations: 4 steps × 2 passes per step = **8** for this image (a count, not a measurement)." \
        in text
    assert "| text encoder | 12.3 ms |" in text and text.endswith("> Empty prompt.")
    assert readouts.running_markdown(5, 10, 1.25).startswith("**Running: step 5/10** · 1.2 s so far")
    assert "`" + "█" * 10 + "░" * 10 + "`" in readouts.running_markdown(5, 10, 1.25)


def test_side_header():
    assert readouts.side_header("⬅", "Left · Baseline", "a `b`", 50, 7.5) == (
        "### ⬅ Left · Baseline: 50 steps · guidance 7.5\n`a 'b'`"
    )


def test_one_pass_readout_banner_and_settings_count_one_unet_pass_per_step():
    """A guidance-embedded UNet (the one-pass student): no CFG batch, the guidance scale is a network input."""
    onepass = dict(t(40.0, 30.0, 4, cfg=False, guidance=4.5), guidance_embedded=True, text_encoder_ms=5.0,
                   unet_ms_mean=7.5, decoder_ms=5.0)  # fmt: skip
    text = readouts.readout_markdown(onepass, 4.5, "cpu", [], "One-pass student")
    assert text.splitlines()[0] == "**One-pass student: 4 steps · guidance 4.5** · 40 ms in total"
    assert "| UNet | 7.5 ms/step × 4 steps = 30 ms (1 pass per step, guidance as input) |" in text, text
    assert "UNet evaluations: 4 steps × 1 pass per step = **4** for this image" in text
    assert readouts.settings_text(onepass) == "4 steps, guidance 4.5 as input"
    assert readouts.settings_text(t(1.0, 1.0, 4, cfg=False, guidance=1.0)) == "4 steps, no CFG"
    assert [readouts.unet_evaluations(x) for x in (onepass, t(1.0, 1.0, 8))] == [4, 16]
    banner = readouts.speedup_html(t(1000.0, 900.0, 50), onepass)
    assert head_of(banner) == "Right side (4 steps, guidance 4.5 as input) is 25× faster than the left side (50 " \
                              "steps, CFG 7.5)"  # fmt: skip
    assert "UNet evaluations per image 100 → 4" in banner
    no_cfg = readouts.readout_markdown(dict(onepass, guidance_embedded=False), 1.0, "cpu", [])
    assert "(no CFG: 1 pass per step)" in no_cfg and "guidance as input" not in no_cfg
