"""Tokenizing every token of every line: the tokenizer's `tokenizers` backend with truncation and
padding switched off for as long as it is needed, and put back as they were afterwards (the XLM-R
tokenizer.json of many checkpoints sets truncation at 128 tokens and padding)."""

from __future__ import annotations

import contextlib
from typing import Iterator


@contextlib.contextmanager
def untruncated(tokenizer) -> Iterator:
    """`with untruncated(tokenizer) as backend:` the tokenizer's `tokenizers.Tokenizer`, with no
    truncation and no padding inside the block; the caller's settings are restored on exit (no
    copy: a copy of XLM-R's 250k-piece model costs a second)."""
    backend = tokenizer.backend_tokenizer
    truncation, padding = backend.truncation, backend.padding
    backend.no_truncation()
    backend.no_padding()
    try:
        yield backend
    finally:
        if truncation is not None:
            backend.enable_truncation(**truncation)
        if padding is not None:
            backend.enable_padding(**{k: v for k, v in padding.items()})
