"""What the commands print when nobody watches: progress bars only on a terminal, and no library message that
says nothing a reader can act on.

A command's stderr often goes to a log file (``make evidence``, ``nohup``, a CI job). A tqdm bar there is one
``\\r`` frame per update; transformers adds its own bars ("Loading weights" on every ``from_pretrained``, "Writing
model shards" on every ``save_pretrained``) and, in a Trainer run whose checkpoints are written less than a second
apart, "mtime may not be reliable on this filesystem, falling back to numerical ordering" (probseq's checkpoints
are ordered by step number either way). So:

- :func:`progress_enabled` — whether to show a bar that was asked for: only when stderr is a terminal (what
  tqdm's own ``disable=None`` decides for the bars probseq draws itself);
- :func:`command_output` — around one command (``probseq.cli.run``): transformers' and huggingface_hub's bars off
  when stderr is not a terminal, the mtime message dropped; both as they were afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Callable, Iterator, TextIO

#: transformers' message on checkpoint ordering (``transformers.trainer_utils.sort_checkpoints``).
MTIME_MESSAGE = "mtime may not be reliable on this filesystem"
MTIME_LOGGER = "transformers.trainer_utils"


def interactive(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default: ``sys.stderr``, where progress bars go) is a terminal."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def progress_enabled(requested: bool = True) -> bool:
    """Show a progress bar that was ``requested``: only on a terminal (a log file would get a frame per update)."""
    return requested and interactive()


class _DropMessage(logging.Filter):
    """A logging filter that drops the records whose message contains ``text``."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def _library_bars_off() -> Callable[[], None]:
    """Turn transformers' and huggingface_hub's progress bars off (transformers, imported later, reads hub's
    setting); return the function that turns them back on as they were."""
    try:
        import huggingface_hub.utils as hub
    except ImportError:  # without the hf extra there are no such bars
        return lambda: None
    hub_was_on = not hub.are_progress_bars_disabled()
    hf = sys.modules.get("transformers.utils.logging")
    hf_was_on = hf.is_progress_bar_enabled() if hf is not None else hub_was_on
    hub.disable_progress_bars()
    if hf is not None:
        hf.disable_progress_bar()

    def restore() -> None:
        hf_now = sys.modules.get("transformers.utils.logging")
        if hf_now is not None and hf_was_on:
            hf_now.enable_progress_bar()  # turns hub's on too
        if hub_was_on:
            hub.enable_progress_bars()
        else:
            hub.disable_progress_bars()

    return restore


@contextlib.contextmanager
def command_output(stream: TextIO | None = None) -> Iterator[None]:
    """For the block (one command): when ``stream`` (default ``sys.stderr``) is not a terminal, transformers' and
    huggingface_hub's progress bars are off; transformers' mtime message is dropped either way. Restored after."""
    restore = (lambda: None) if interactive(stream) else _library_bars_off()
    mtime = _DropMessage(MTIME_MESSAGE)
    logging.getLogger(MTIME_LOGGER).addFilter(mtime)
    try:
        yield
    finally:
        logging.getLogger(MTIME_LOGGER).removeFilter(mtime)
        restore()


__all__ = ["MTIME_LOGGER", "MTIME_MESSAGE", "command_output", "interactive", "progress_enabled"]
