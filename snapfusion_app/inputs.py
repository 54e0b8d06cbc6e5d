"""Input rules of the app and the command line: what a visitor (or a flag) may pass, each refusal an ``InputError``
(a ``ValueError``) that names the value and what is allowed.

Light on purpose (no gradio, no torch): the CLI checks its flags with these rules before it loads anything.
"""

from __future__ import annotations

import math
from typing import Any

MAX_PROMPT_CHARS = 1000  # longer prompts are refused; a shorter one past the token limit is truncated with a note
MAX_SEED = 2**32
STEPS_MIN, STEPS_MAX = 1, 100
GUIDANCE_MIN, GUIDANCE_MAX = 1.0, 20.0  # <= 1 turns classifier-free guidance off


class InputError(ValueError):
    """A bad value from a visitor or a flag; the message names it and what is allowed."""


def show(value: Any) -> str:
    """Short rendering of a bad value for an error message (a 400-digit seed is not printed in full)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"an integer of {len(str(abs(value))) if value.bit_length() < 10_000 else 'over 3,000'} digits"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def as_int(value: Any) -> int | None:
    """``value`` as an int when it is a whole number (8 and 8.0; JSON clients send sliders as floats), else None.
    Never converts a big int to float (10**400 would overflow)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def is_number(value: Any) -> bool:
    """A real, finite number (bools and NaN are not); ints of any size are."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def check_text(value: Any, name: str, limit_note: str = "") -> str:
    """Text up to ``MAX_PROMPT_CHARS`` characters; ``limit_note`` says how much of it the text encoder reads."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InputError(f"{name} must be text; got {type(value).__name__} {show(value)}.")
    if len(value) > MAX_PROMPT_CHARS:
        note = f" ({limit_note})" if limit_note else ""
        raise InputError(
            f"{name} is {len(value):,} characters long; the limit is {MAX_PROMPT_CHARS:,} characters{note}."
        )
    return value


def check_int(value: Any, name: str, low: int, high: int) -> int:
    """An integer in [low, high]; 8.0 is accepted as 8."""
    number = as_int(value)
    if number is None or not low <= number <= high:
        raise InputError(f"{name} must be an integer in [{low}, {high}]; got {show(value)}.")
    return number


def check_float(value: Any, name: str, low: float, high: float, why: str = "") -> float:
    """A number in [low, high]; ``why`` says where the range comes from, e.g. " (the range the one-pass student was
    trained on)"."""
    if not (is_number(value) and low <= value <= high):
        raise InputError(f"{name} must be a number in [{low:g}, {high:g}]{why}; got {show(value)}.")
    return float(value)


def check_seed(value: Any, name: str = "seed") -> int:
    number = as_int(value)
    if number is None or not 0 <= number < MAX_SEED:
        raise InputError(f"{name} must be an integer in [0, 2^32) = [0, {MAX_SEED - 1}]; got {show(value)}.")
    return number


def check_bool(value: Any, name: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InputError(f"{name} must be true or false; got {show(value)}.")
    return value


def check_choice(value: Any, name: str, allowed) -> Any:
    if isinstance(value, bool) or value not in allowed:
        raise InputError(f"{name} must be one of {', '.join(map(str, allowed))}; got {show(value)}.")
    return value


# ---------------------------------------------------------------------------------------------- prompt length


def token_limit(tokenizer) -> int:
    """How many tokens (start and end tokens included) the text encoder behind ``tokenizer`` reads."""
    return int(tokenizer.model_max_length)


def token_limit_note(limits: dict[str, int]) -> str:
    """What the text encoders read, in words: ``{"left": 77, "right": 24}`` -> "the text encoders read only the first
    77 tokens (left) and 24 tokens (right) of a prompt"."""
    counts = sorted(set(limits.values()))
    if len(counts) == 1:
        return f"the text encoder reads only the first {counts[0]} tokens of a prompt"
    parts = " and ".join(f"{n} tokens ({key})" for key, n in limits.items())
    return f"the text encoders read only the first {parts} of a prompt"


def dropped_text(tokenizer, text: str) -> tuple[int, str] | None:
    """``(tokens ignored, the ignored text as typed)`` when ``text`` is longer than the tokenizer's limit, else None.

    The ignored text is cut from ``text`` itself at the start of the word where the limit falls (not decoded from
    tokens, so words the vocabulary lacks are not shown as ``<|endoftext|>``)."""
    limit = token_limit(tokenizer)
    ids = tokenizer(text, truncation=False, verbose=False).input_ids  # with start and end tokens
    if len(ids) <= limit:
        return None
    ignored = len(ids) - limit
    try:
        offsets = tokenizer(text, truncation=False, verbose=False, return_offsets_mapping=True).offset_mapping
        start = offsets[limit - 1][0]  # the first token past the limit (the last slot holds the end token)
    except (NotImplementedError, TypeError, ValueError, AttributeError):  # a slow tokenizer: no offsets
        return ignored, ""
    word_start = max(text.rfind(c, 0, start + 1) for c in (" ", "\n", "\t")) + 1
    return ignored, text[word_start:].strip()
