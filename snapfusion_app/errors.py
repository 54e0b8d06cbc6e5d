"""Every exception a handler raises reaches the visitor as a short ``gr.Error``, never a traceback."""

from __future__ import annotations

import functools
import html
import inspect
import logging
from collections.abc import Callable

import gradio as gr

logger = logging.getLogger(__name__)


class Cancelled(Exception):
    """The visitor pressed Cancel; the pipeline stopped after its current step."""


def bad_input(message: str) -> gr.Error:
    """A ``gr.Error`` for a visitor's bad value: shown to the visitor, not logged as a server fault."""
    return gr.Error(html.escape(message if len(message) <= 400 else message[:397] + "...", quote=False),
                    print_exception=False)  # fmt: skip


def user_error(e: BaseException) -> gr.Error:
    """A short message for the visitor; an unexpected error's traceback goes to the server log only."""
    if isinstance(e, gr.Error):
        return e
    if isinstance(e, Cancelled):
        return gr.Error("Cancelled.", print_exception=False)
    if isinstance(e, ValueError):  # InputError, ModelLoadError, ExportError: written for people
        return bad_input(str(e))
    logger.exception("unexpected error in a handler")
    message = f"Unexpected error ({type(e).__name__}); the details are in the server log."
    return gr.Error(message, print_exception=False)


def user_errors(fn: Callable) -> Callable:
    """Decorator: map every exception of ``fn`` with ``user_error``. Keeps ``fn``'s signature (gradio injects
    ``gr.Request`` / ``gr.Progress`` by it) and generator-ness."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as e:
                raise user_error(e) from None

        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            raise user_error(e) from None

    return wrapper
