"""The root of every error Wide Valley raises on purpose, so that one `except` clause
around `widevalley.fit` catches bad input and a failed run alike.

Each kind also keeps the built-in class it always had (ConfigError is a ValueError,
StorageError an OSError, RunFailed a RuntimeError, …), so existing handlers still match.
The kinds live beside the code that raises them; `widevalley` exports them all.
"""

from __future__ import annotations


class WideValleyError(Exception):
    """Bad input, or a run that failed or was stopped; the message is one line."""
