"""Text prompts → CLIP token ids for the text encoder (``tokenizers`` only, no transformers).

The tokenizer file is the ``tokenizer.json`` written by ``export/tokenizer.py``: CLIP BPE
(vocab 49408, bos 49406, eos/pad 49407), NFC + whitespace cleanup + lowercase, with
truncation and padding fixed at the text length of the spec (32). Ids equal transformers'
CLIPTokenizer(text, padding="max_length", max_length=32, truncation=True): a long text keeps
bos, its first 30 tokens and eos.
"""

from __future__ import annotations

import numpy as np
from errors import InputError
from tokenizers import Tokenizer

MAX_TEXT_CHARS = 1000  # longer prompts are refused (only ~30 tokens are used anyway)


class TokenizerFileError(RuntimeError):
    """tokenizer.json is not the fixed-length CLIP tokenizer export/tokenizer.py writes."""


class TextTokenizer:
    """Encodes batches of text prompts to fixed-length CLIP ids and attention masks."""

    def __init__(self, tokenizer: Tokenizer, max_chars: int = MAX_TEXT_CHARS):
        self.context_length = _fixed_length(tokenizer)
        self.tokenizer = tokenizer
        self.max_chars = max_chars

    @classmethod
    def from_file(cls, path, max_chars: int = MAX_TEXT_CHARS) -> "TextTokenizer":
        """Load ``tokenizer.json`` (export/tokenizer.py's build_tokenizer_json)."""
        return cls(Tokenizer.from_file(str(path)), max_chars)

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """texts [N] → (input_ids int64 [N, L], attention_mask int64 [N, L]), L = context length.

        Raises InputError for a non-string, empty (or whitespace-only) or too long text.
        """
        for i, text in enumerate(texts):
            self._check(i, text)
        encodings = self.tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encodings], dtype=np.int64).reshape(len(texts), self.context_length)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64).reshape(ids.shape)
        return ids, mask

    def _check(self, index: int, text) -> None:
        """Raise InputError unless ``text`` is a non-empty string of at most max_chars characters."""
        if not isinstance(text, str):
            raise InputError(f"text[{index}] must be a string, got {type(text).__name__}")
        if not text.strip():
            raise InputError(f'text[{index}] is empty; send a short noun phrase such as "red car"')
        if len(text) > self.max_chars:
            raise InputError(
                f"text[{index}] has {len(text)} characters, over the {self.max_chars} limit; "
                "send a short noun phrase (only the first ~30 tokens are used)"
            )


def _fixed_length(tokenizer: Tokenizer) -> int:
    """The fixed sequence length the tokenizer pads and truncates to; TokenizerFileError otherwise."""
    trunc, pad = tokenizer.truncation, tokenizer.padding
    if not trunc or not pad or pad.get("length") is None or pad["length"] != trunc["max_length"]:
        raise TokenizerFileError(
            f"tokenizer.json must truncate and pad to one fixed length (got truncation "
            f"{trunc}, padding {pad}); rebuild it with export/tokenizer.py"
        )
    return int(pad["length"])
