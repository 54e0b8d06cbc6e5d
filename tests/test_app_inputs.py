"""snapfusion_app/inputs.py (the input rules shared by the app and the CLI) and snapfusion_app/errors.py (how an
exception reaches a visitor)."""

from __future__ import annotations

from pathlib import Path

import pytest

from snapfusion_app import inputs

BUNDLE_TOKENIZER = Path(__file__).resolve().parent.parent / "bundle" / "student" / "tokenizer"


@pytest.mark.parametrize("value", [10**400, -(10**400), 2**32, -1, 1.5, float("inf"), float("nan"), True, "3", None])
def test_seed_out_of_range_or_not_an_integer_gets_the_range_message(value):
    with pytest.raises(inputs.InputError, match=r"^seed must be an integer in \[0, 2\^32\) = \[0, 4294967295\]; got "):
        inputs.check_seed(value)


def test_huge_numbers_are_shown_short_and_never_overflow():
    with pytest.raises(inputs.InputError) as info:
        inputs.check_seed(10**400)
    assert str(info.value).endswith("got an integer of 401 digits.")
    with pytest.raises(inputs.InputError, match=r"steps must be an integer in \[1, 100\]; got an integer of 401"):
        inputs.check_int(10**400, "steps", 1, 100)
    with pytest.raises(inputs.InputError, match=r"guidance must be a number in \[1, 20\]; got an integer of 401"):
        inputs.check_float(10**400, "guidance", 1.0, 20.0)
    assert inputs.check_seed(4294967295) == 4294967295 and inputs.check_seed(8.0) == 8
    assert inputs.check_int(8.0, "steps", 1, 100) == 8 and isinstance(inputs.check_int(8.0, "s", 1, 9), int)
    assert inputs.check_float(20, "guidance", 1.0, 20.0) == 20.0


def test_text_and_choices():
    assert inputs.check_text(None, "prompt") == "" and inputs.check_text("abc", "prompt") == "abc"
    with pytest.raises(inputs.InputError) as info:
        inputs.check_text("x" * 1001, "prompt", "the text encoder reads only the first 24 tokens of a prompt")
    assert str(info.value) == ("prompt is 1,001 characters long; the limit is 1,000 characters (the text encoder "
                               "reads only the first 24 tokens of a prompt).")  # fmt: skip
    with pytest.raises(inputs.InputError, match="must be one of fp16, fp32; got 'int8'"):
        inputs.check_choice("int8", "precision", ("fp16", "fp32"))
    with pytest.raises(inputs.InputError, match="randomize seed must be true or false; got 'yes'"):
        inputs.check_bool("yes", "randomize seed")


def test_token_limit_note_names_each_sides_limit():
    assert inputs.token_limit_note({"left": 24, "right": 24}) == (
        "the text encoder reads only the first 24 tokens of a prompt"
    )
    assert inputs.token_limit_note({"left": 77, "right": 24}) == (
        "the text encoders read only the first 77 tokens (left) and 24 tokens (right) of a prompt"
    )


@pytest.mark.skipif(not BUNDLE_TOKENIZER.is_dir(), reason="no bundle in this checkout")
def test_dropped_text_of_the_bundle_tokenizer_is_the_prompt_as_typed():
    """The bundle's encoder reads 24 tokens; characters outside its vocabulary are <|endoftext|> tokens."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(BUNDLE_TOKENIZER))
    assert inputs.token_limit(tok) == 24
    text = "ein großer roter Kreis über einem kleinen blauen Quadrat auf grauem Hintergrund"
    ignored, dropped = inputs.dropped_text(tok, text)
    assert ignored == len(tok(text).input_ids) - 24 > 0
    assert text.endswith(dropped) and "endoftext" not in dropped and dropped.startswith("einem kleinen")
    assert inputs.dropped_text(tok, "a big red circle") is None


def test_user_error_maps_exceptions_to_short_messages():
    import gradio as gr

    from snapfusion_app.errors import Cancelled, bad_input, user_error, user_errors

    assert user_error(inputs.InputError("seed <b> bad")).message == "seed &lt;b&gt; bad"
    assert user_error(Cancelled()).message == "Cancelled."
    assert user_error(KeyError("x")).message == "Unexpected error (KeyError); the details are in the server log."
    long = bad_input("x" * 500).message
    assert long == "x" * 397 + "..."

    @user_errors
    def gen(n):
        yield n
        raise ValueError("n too big")

    it = gen(1)
    assert next(it) == 1
    with pytest.raises(gr.Error, match="n too big"):
        next(it)
