"""snapfusion_app/session.py: the Compare tab's handlers, end to end through gradio_client on tiny models (32x32
images): both sides, one side alone, per-session state, bad input, Cancel."""

from __future__ import annotations

import re
import threading
import time

import numpy as np
import pytest
from app_helpers import STEPS, compare, pixels


class Request:  # what gradio passes to a handler: only the session matters here
    def __init__(self, session_hash):
        self.session_hash = session_hash


# ------------------------------------------------------------------------------------------------- compare


def test_compare_returns_both_images_with_measured_timings(client):
    l_img, l_text, r_img, r_text, banner, seed, data = compare(client, seed=3)
    assert pixels(l_img).shape == (32, 32, 3) and pixels(r_img).shape == (32, 32, 3)
    assert seed == 3 and data["seed"] == 3
    for side, steps in (("left", STEPS["left_steps"]), ("right", STEPS["right_steps"])):
        t = data[side]
        assert t["steps_run"] == steps and len(t["unet_ms_per_step"]) == steps
        for key in ("text_encoder_ms", "unet_ms_total", "decoder_ms", "total_ms"):
            assert t[key] > 0, (side, key, t[key])
        assert t["total_ms"] >= t["unet_ms_total"] + t["text_encoder_ms"] + t["decoder_ms"]
        assert t["cfg"] is True and t["device"] == "cpu"
    assert data["speedup"]["total"] == pytest.approx(data["left"]["total_ms"] / data["right"]["total_ms"])
    assert data["speedup"]["unet"] == pytest.approx(data["left"]["unet_ms_total"] / data["right"]["unet_ms_total"])
    for text, steps in ((l_text, 4), (r_text, 2)):
        assert f"{steps} steps" in text and "Measured on cpu" in text and "ms/step" in text
    # the banner's one word and number follow from the measured ratio (faster when > 1, slower otherwise)
    ratio = data["speedup"]["total"]
    word, x = ("faster", ratio) if ratio >= 1 else ("slower", 1 / ratio)
    number = f"{x:.1f}×" if x < 10 else f"{x:.0f}×"
    other = "slower" if word == "faster" else "faster"
    head = f"Right side (2 steps, CFG 4.5) is {number} {word} than the left side (4 steps, CFG 7.5)"
    assert head in banner and f"Right side (2 steps, CFG 4.5) is {number} {other}" not in banner, banner


def test_same_seed_same_image_and_sides_agree_with_single_runs(client):
    first = compare(client, seed=11)
    again = compare(client, seed=11)
    other = compare(client, seed=12)
    np.testing.assert_array_equal(pixels(first[0]), pixels(again[0]))
    np.testing.assert_array_equal(pixels(first[2]), pixels(again[2]))
    assert not np.array_equal(pixels(first[2]), pixels(other[2]))
    assert not np.array_equal(pixels(first[0]), pixels(first[2]))  # two different models
    # one side alone gives the same image as that side of a comparison
    right = client.predict("a big red circle", "", 11, False, STEPS["right_steps"], STEPS["right_guidance"],
                           api_name="/right")  # fmt: skip
    np.testing.assert_array_equal(pixels(right[0]), pixels(first[2]))
    assert "Run the left side" in right[2] and "faster" not in right[2]  # no left run with this prompt and seed yet
    left = client.predict("a big red circle", "", 11, False, STEPS["left_steps"], STEPS["left_guidance"],
                          api_name="/left")  # fmt: skip
    np.testing.assert_array_equal(pixels(left[0]), pixels(first[0]))
    assert "Right side (2 steps, CFG 4.5) is" in left[2] and "than the left side (4 steps, CFG 7.5)" in left[2]
    assert "run separately" in left[2]
    assert set(left[4]) == {"seed", "left", "speedup"}


def test_a_side_run_alone_with_other_settings_says_what_it_compares(served):
    """The newcomer's case: the right side alone with 4 steps and no CFG against the left's 50-step CFG run."""
    app_ = served[1].snapfusion
    request = Request("like-with-like")
    left = list(app_.run_one("left", "a red circle", "", 5, False, 50, 7.5, request))[-1]
    right = list(app_.run_one("right", "a red circle", "", 5, False, 4, 1.0, request))[-1]
    banner, data = right[2], right[4]
    ratio = data["speedup"]["total"]
    assert ratio == pytest.approx(left[4]["left"]["total_ms"] / right[4]["right"]["total_ms"])
    word = "faster" if ratio >= 1 else "slower"
    x = ratio if ratio >= 1 else 1 / ratio
    number = f"{x:.1f}×" if x < 10 else f"{x:.0f}×"
    head = re.search(r"font-weight:700;color:#\w+'>(.*?)</div>", banner).group(1)
    assert head == f"Right side (4 steps, no CFG) is {number} {word} than the left side (50 steps, CFG 7.5)"
    assert "The two sides were run separately." in banner
    # another seed on the right: nothing to compare with, no ratio
    alone = list(app_.run_one("right", "a red circle", "", 6, False, 4, 1.0, request))[-1]
    assert "Run the left side with the same prompt and seed" in alone[2] and "speedup" not in alone[4]


def test_randomized_seed_is_reported_and_reproducible(client):
    out = compare(client, seed=0, randomize=True)
    seed = out[5]
    assert isinstance(seed, int) and 0 <= seed < 2**32 and out[6]["seed"] == seed
    again = compare(client, seed=seed)
    np.testing.assert_array_equal(pixels(out[2]), pixels(again[2]))


@pytest.mark.slow
def test_four_concurrent_clients_get_their_own_results(served):
    from gradio_client import Client

    seeds = [21, 22, 23, 24]
    results, errors = {}, []

    def worker(seed):
        try:
            results[seed] = compare(Client(served[0], verbose=False), seed=seed)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(s,)) for s in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors and sorted(results) == seeds
    images = {s: pixels(results[s][2]) for s in seeds}
    assert all(not np.array_equal(images[a], images[b]) for a in seeds for b in seeds if a < b)
    for s in seeds:  # each matches a serial run with the same seed
        assert results[s][5] == s
        serial = compare(Client(served[0], verbose=False), seed=s)
        np.testing.assert_array_equal(pixels(serial[2]), images[s])
        np.testing.assert_array_equal(pixels(serial[0]), pixels(results[s][0]))


# ------------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "override, expected",
    [
        ({"left_steps": 500}, ["steps (left) must be an integer in [1, 100]; got 500."]),
        ({"right_steps": 0}, ["steps (right) must be an integer in [1, 100]; got 0."]),
        ({"right_steps": 2.5}, ["steps (right)", "integer", "2.5"]),
        ({"left_steps": "many"}, ["steps (left)", "'many'"]),
        ({"left_guidance": "abc"}, ["guidance (left)", "[1, 20]", "'abc'"]),
        ({"right_guidance": 100.0}, ["guidance (right)", "[1, 20]", "100.0"]),
        ({"seed": -1}, ["seed", "[0, 2^32)", "-1"]),
        ({"seed": 2**32}, ["seed", "[0, 2^32)", "4294967296"]),
        ({"seed": 10**400}, ["seed must be an integer in [0, 2^32)", "got an integer of 401 digits."]),
        ({"left_steps": 10**400}, ["steps (left) must be an integer in [1, 100]; got an integer of 401 digits."]),
        ({"right_guidance": 10**400}, ["guidance (right) must be a number in [1, 20]"]),
        ({"seed": "x"}, ["seed", "'x'"]),
        ({"prompt": "a red circle " * 800}, ["prompt", "10,400 characters", "limit is 1,000"]),
        ({"prompt": 123}, ["prompt must be text", "int"]),
        ({"negative": "x" * 2000}, ["negative prompt", "2,000 characters"]),
        ({"randomize": "yes"}, ["randomize seed", "true or false"]),
    ],
)
def test_bad_input_gets_a_message_naming_the_value(client, override, expected):
    from gradio_client.exceptions import AppError

    kwargs = {"prompt": "a red circle", "seed": 1}
    kwargs.update(override)
    with pytest.raises(AppError) as info:
        compare(client, **kwargs)
    message = str(info.value)
    assert all(e in message for e in expected), message
    assert "Traceback" not in message and "Unexpected error" not in message


def test_prompt_limit_comes_from_the_loaded_tokenizers(client, served):
    from gradio_client.exceptions import AppError

    limits = {k: s.pipe.tokenizer.model_max_length for k, s in served[1].snapfusion.sides.items()}
    assert set(limits.values()) == {16}  # the tiny models' encoders (the bundle's read 24, SD's 77)
    with pytest.raises(AppError) as info:
        compare(client, prompt="x" * 1001)
    assert str(info.value) == ("prompt is 1,001 characters long; the limit is 1,000 characters (the text encoder "
                               "reads only the first 16 tokens of a prompt).")  # fmt: skip


def test_empty_prompt_is_unconditional_and_long_prompt_is_truncated_readably(client):
    out = compare(client, prompt="")
    assert "unconditional" in out[1] and "unconditional" in out[3]
    # the tiny encoders read 16 tokens (start + 14 + end); "ß" and "ü" are not in the toy vocabulary (unknown
    # tokens, <|endoftext|> when decoded): the note quotes the ignored words as typed
    long = "ein großer roter Kreis über einem kleinen blauen Quadrat"
    out = compare(client, prompt=long)
    for readout in (out[1], out[3]):
        assert "endoftext" not in readout, readout
        assert ("Prompt truncated: this text encoder reads 16 tokens; the last 31 tokens were ignored "
                "(text from: “Kreis über einem kleinen blauen Quadrat”).") in readout, readout


def test_unexpected_errors_reach_the_visitor_as_a_short_message(served, client, monkeypatch):
    from gradio_client.exceptions import AppError

    app_ = served[1].snapfusion
    monkeypatch.setattr(app_.sides["right"].pipe, "decode_latents", lambda latents: 1 / 0)
    with pytest.raises(AppError) as info:
        compare(client)
    assert str(info.value) == "Unexpected error (ZeroDivisionError); the details are in the server log."


# ------------------------------------------------------------------------------------------------- cancel


def _cancel_when(app_, request, gen, readout_index, pattern):
    """Iterate ``gen`` until output ``readout_index`` shows a running step that matches ``pattern``, then Cancel;
    returns (what cancel returned, the steps seen, the run's last update)."""
    seen, answer, update = [], None, None
    for update in gen:
        readout = update[readout_index] if isinstance(update[readout_index], str) else ""
        if readout.startswith("**Running: step"):
            seen.append(readout)
            if answer is None and re.search(pattern, readout):
                answer = app_.cancel(request)  # another session's cancel would not touch this run
    return answer, seen, update


def test_cancel_during_the_left_side_says_so_on_the_page(served):
    """Cancel while "Generate both" runs its second (left) side: the banner and the left readout say cancelled and
    where it stopped; the right side (finished) keeps its result."""
    import gradio as gr

    app_ = served[1].snapfusion
    request = Request("cancel-left")
    gen = app_.compare("a red circle", "", 1, False, 50, 7.5, 2, 4.5, request=request)
    (banner, left_readout, right_readout), seen, last = _cancel_when(app_, request, gen, 1, r"step (?!0/)\d+/50\*\*")
    # the run ends by sending Cancel's view again (gradio resends a stream's last values; no error, no progress)
    assert (last[1], last[3], last[4]) == (left_readout, right_readout, banner)
    step = int(re.search(r"step (\d+)/50", seen[-1]).group(1))
    assert 1 <= step < 50
    assert "Cancelled." in banner and "still running" not in banner
    assert "The right side had finished" in banner and "the left side stopped at step" in banner
    assert left_readout.startswith("**Cancelled at step ") and left_readout.endswith("/50**: no image, no timings.")
    assert isinstance(right_readout, type(gr.skip()))  # the finished right side keeps its image and timings
    assert app_.cancel(request) == (gr.skip(), gr.skip(), gr.skip())  # nothing runs now: nothing to say


def test_cancel_during_the_right_side_says_the_left_did_not_run(served):
    app_ = served[1].snapfusion
    request = Request("cancel-right")
    gen = app_.compare("a red circle", "", 1, False, 2, 7.5, 50, 4.5, request=request)
    (banner, left_readout, right_readout), seen, last = _cancel_when(app_, request, gen, 3, r"step (?!0/)\d+/50\*\*")
    assert (last[1], last[3], last[4]) == (left_readout, right_readout, banner)
    assert seen and all("/50**" in s for s in seen)  # stopped in the right side, before the left began
    assert "The right side stopped at step" in banner and "the left side did not run" in banner
    assert right_readout.startswith("**Cancelled at step ")
    assert left_readout == "**Cancelled** before this side ran: no image, no timings."
    # the app still works afterwards, in the same session
    out = list(app_.compare("a red circle", "", 1, False, 2, 7.5, 2, 4.5, request=request))[-1]
    assert out[6]["left"]["steps_run"] == 2


def test_cancel_a_side_run_alone(served):
    app_ = served[1].snapfusion
    request = Request("cancel-alone")
    gen = app_.run_one("left", "a red circle", "", 1, False, 50, 7.5, request)
    (banner, left_readout, right_readout), seen, last = _cancel_when(app_, request, gen, 1, r"step (?!0/)\d+/50\*\*")
    assert "The left side stopped at step" in banner and left_readout.startswith("**Cancelled at step ")
    assert (last[1], last[2]) == (left_readout, banner)


def test_wait_stopped_returns_once_the_run_has_sent_its_last_update(served):
    """Cancel's second step (before gradio's cancel of queued runs) waits for the run's end: finished or closed."""
    from concurrent.futures import ThreadPoolExecutor

    app_ = served[1].snapfusion
    request = Request("wait-stopped")
    assert app_.wait_stopped(3, request) == 4  # nothing ran in this session: at once
    with ThreadPoolExecutor(1) as pool:
        for end in (lambda g: list(g), lambda g: g.close()):
            gen = app_.compare("a red circle", "", 1, False, 2, 7.5, 2, 4.5, request=request)
            next(gen)  # running
            waiter = pool.submit(app_.wait_stopped, 0, request)
            time.sleep(0.5)
            assert not waiter.done()
            end(gen)
            assert waiter.result(timeout=30) == 1


def test_cancel_touches_only_its_own_session(served):
    import gradio as gr

    app_ = served[1].snapfusion
    mine, other = Request("mine"), Request("other")
    gen = app_.compare("a red circle", "", 1, False, 2, 7.5, 2, 4.5, request=mine)
    next(gen)  # started
    assert app_.cancel(other) == (gr.skip(), gr.skip(), gr.skip())
    assert list(gen)[-1][6]["right"]["steps_run"] == 2  # ran to the end


# ------------------------------------------------------------------------------------------------- one-pass student


def test_the_one_pass_student_on_the_right_runs_one_unet_pass_per_step(client):
    """right_model="onepass": the guidance-embedded student (4 steps, guidance as input, no CFG batch) on the right,
    the same measured readouts and banner; the left side is the same baseline."""
    l_img, l_text, r_img, r_text, banner, seed, data = compare(client, seed=4, right_model="onepass", right_steps=4,
                                                               right_guidance=4.5)  # fmt: skip
    right = data["right"]
    assert right["guidance_embedded"] is True and right["cfg"] is False and right["steps_run"] == 4
    assert right["unet_evaluations"] == 4 and right["role"] == "One-pass student"
    assert right["model"].startswith("Tiny one-pass student (")
    assert data["left"]["unet_evaluations"] == 2 * STEPS["left_steps"] and data["left"]["role"] == "Baseline"
    assert "(1 pass per step, guidance as input)" in r_text and "**4** for this image" in r_text
    assert "(CFG: 2 passes per step, one batch of 2)" in l_text
    assert "Right side (4 steps, guidance 4.5 as input) is" in banner
    assert "than the left side (4 steps, CFG 7.5)" in banner
    assert "UNet evaluations per image 8 → 4" in banner
    assert data["speedup"]["total"] == pytest.approx(data["left"]["total_ms"] / right["total_ms"])
    # the default (no right_model: an API caller from before) is still the SnapFusion student, and the one-pass
    # student's image differs from it
    student = compare(client, seed=4, right_steps=4, right_guidance=4.5)
    assert student[6]["right"]["role"] == "SnapFusion student" and student[6]["right"]["cfg"] is True
    assert not np.array_equal(pixels(student[2]), pixels(r_img))
    np.testing.assert_array_equal(pixels(student[0]), pixels(l_img))  # same left side
    # the guidance scale is an input of the network: another scale, another image
    other = compare(client, seed=4, right_model="onepass", right_steps=4, right_guidance=2.0)
    assert not np.array_equal(pixels(other[2]), pixels(r_img))


def test_the_right_side_alone_with_the_one_pass_student(client):
    alone = client.predict("a big red circle", "", 9, False, 4, 4.5, "onepass", api_name="/right")
    assert alone[4]["right"]["guidance_embedded"] is True and "1 pass per step" in alone[1]
    positional = client.predict("a big red circle", "", 9, False, 2, 4.5, api_name="/right")  # without the choice
    assert positional[4]["right"]["role"] == "SnapFusion student"
    left = client.predict("a big red circle", "", 9, False, 4, 7.5, api_name="/left")  # compares with the last right
    assert "Right side (2 steps, CFG 4.5) is" in left[2] and "run separately" in left[2]


@pytest.mark.parametrize(
    "override, expected",
    [
        ({"right_guidance": 9.0},
         "guidance (right) must be a number in [1, 8] (the range the one-pass student was trained on); got 9.0."),
        ({"right_guidance": 0.5},
         "guidance (right) must be a number in [1, 8] (the range the one-pass student was trained on); got 0.5."),
        ({"negative": "blurry"},
         "negative prompt: the one-pass student on the right takes the guidance scale as an input and runs one UNet "
         "pass per step, with no unconditional branch, so a negative prompt has no effect on it. Leave the negative "
         "prompt empty."),
        ({"right_model": "third"}, "right model must be one of student, onepass; got 'third'."),
        ({"right_model": 1}, "right model must be one of student, onepass; got 1."),
    ],
)
def test_bad_input_for_the_one_pass_student(client, override, expected):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as info:
        compare(client, **dict({"right_model": "onepass", "right_steps": 4, "right_guidance": 4.5}, **override))
    assert str(info.value) == expected


def test_a_guidance_the_student_takes_is_refused_only_for_the_one_pass_student(served):
    app_ = served[1].snapfusion
    assert app_.check_side("right", 8, 12.0) == (8, 12.0)  # the SnapFusion student: CFG, [1, 20]
    with pytest.raises(ValueError, match=r"\[1, 8\] \(the range the one-pass student was trained on\); got 12.0"):
        app_.check_side("right", 8, 12.0, "onepass")
    app_.check_negative(app_.side("right"), "blurry")  # the student has an unconditional branch: allowed
    app_.check_negative(app_.side("right", "onepass"), "  ")  # blank is empty


def test_choosing_the_right_model_updates_that_sides_controls_only(served):
    app_ = served[1].snapfusion
    header, steps, guidance, image, readout, banner, negative = app_.choose_right("onepass")
    assert header.startswith("### ➡ Right · One-pass student: 4 steps · guidance 4.5\n`Tiny one-pass student (")
    assert steps["value"] == 4 and (guidance["minimum"], guidance["maximum"], guidance["value"]) == (1.0, 8.0, 4.5)
    assert guidance["info"] == "an input of the UNet, trained on [1, 8]"
    assert image["value"] is None and image["label"].startswith("Right · One-pass student: Tiny one-pass student (")
    assert readout == "*Right · One-pass student: latency readout appears here.*"
    assert "one-pass student" in banner and "faster" not in banner
    assert negative["info"].startswith("Not used by the one-pass student")
    header, steps, guidance, image, *_, negative = app_.choose_right("student")
    assert header.startswith("### ➡ Right · SnapFusion student: 8 steps · guidance 4.5\n`Tiny student (")
    assert steps["value"] == 8 and (guidance["minimum"], guidance["maximum"]) == (1.0, 20.0)
    assert guidance["info"] == "≤ 1 turns CFG off" and negative["info"] == ""
    header = app_.header("right", 4, 2.0, "onepass")
    assert header.startswith("### ➡ Right · One-pass student: 4 steps · guidance 2")
    with pytest.raises(ValueError, match="guidance \\(right\\) must be a number in \\[1, 8\\]"):
        app_.header("right", 4, 12.0, "onepass")
    # a choice is an input of the visitor's calls: nothing on the server changed
    assert app_.side("right").role == "SnapFusion student" and app_.sides["right"].role == "SnapFusion student"


def test_without_a_one_pass_model_the_choice_is_hidden_and_refused(tmp_path, model_dirs):
    import app

    demo = app.create_demo(*model_dirs, warmup=False)
    try:
        app_ = demo.snapfusion
        assert list(app_.right_models) == ["student"] and list(app_.models) == ["left", "right"]
        radio = next(c for c in demo.config["components"] if c.get("props", {}).get("elem_id") == "right-model")
        assert radio["props"]["visible"] is False
        with pytest.raises(ValueError) as info:
            app_.check_right_model("onepass")
        assert str(info.value) == ("right model 'onepass' (one-pass student) is not loaded on this server; choose "
                                   "'student'.")
        assert app_.check_right_model(None) == "student"
    finally:
        demo.close()
