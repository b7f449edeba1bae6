"""The JSON rules of process records now live with the rest of what every store shares, in ``_base.py``;
this path keeps working."""

from __future__ import annotations

from ._base import (
    CUT_KEY,
    SUMMARY_ERROR_CHARS,
    SUMMARY_KEYS,
    SUMMARY_PROGRESS_BYTES,
    SUMMARY_STATUS_CHARS,
    TERMINAL_STATE_NAMES,
    RecordTexts,
    bounded_progress,
    decode_record,
    decode_summary,
    record_texts,
    safe_value,
    summary_of,
)

__all__ = [
    "CUT_KEY",
    "SUMMARY_KEYS",
    "SUMMARY_ERROR_CHARS",
    "SUMMARY_PROGRESS_BYTES",
    "SUMMARY_STATUS_CHARS",
    "TERMINAL_STATE_NAMES",
    "RecordTexts",
    "bounded_progress",
    "decode_record",
    "decode_summary",
    "record_texts",
    "safe_value",
    "summary_of",
]
