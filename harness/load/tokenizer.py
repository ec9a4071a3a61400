"""Token counting for prompt lengths: the served model's tokenizer when it is on disk, else an
approximation (one common English word per token) that says so.

Loading reads files (the model directory) and is the only I/O here; encoding is pure.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

#: Short, very common English words: each is one token (with its leading space) in the
#: tokenizers of every mainstream LLM family, which makes "N words ~ N tokens" a fair
#: approximation when the real tokenizer is not available.
_WORDS_TEXT = (
    "the of and to in is was for on that with as by at from his her an which or be are this "
    "have not but had were they their one all has been more when there who will would so no "
    "if out up about into than them its can only other time new some could these two may "
    "first then do any like my now over such our man me even most made after also did many "
    "before must through back years where much your way well down should because each just "
    "those people how too little state good very make world still own see men work long get "
    "here between both life being under never day same another know while last might us great "
    "old year off come since against go came right used take three"
)
WORDS: tuple[str, ...] = tuple(_WORDS_TEXT.split())


class PromptTokenizer(Protocol):
    """What the load generator needs from a tokenizer."""

    name: str
    exact: bool

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class WordTokenizer:
    """The approximation: a token is one word of :data:`WORDS`."""

    name = "approximate (1 word ~ 1 token)"
    exact = False

    def encode(self, text: str) -> list[int]:
        index = {w: i for i, w in enumerate(WORDS)}
        return [index.get(w, 0) for w in text.split()]

    def decode(self, ids: list[int]) -> str:
        return " ".join(WORDS[i % len(WORDS)] for i in ids)


class HFTokenizer:
    """A ``tokenizers.Tokenizer`` (the fast tokenizer every HF model ships as tokenizer.json)."""

    exact = True

    def __init__(self, tok: Any, name: str) -> None:
        self._tok = tok
        self.name = name

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int]) -> str:
        return str(self._tok.decode(ids, skip_special_tokens=True))


class TransformersTokenizer:
    """Fallback for model directories without tokenizer.json (slow tokenizers)."""

    exact = True

    def __init__(self, tok: Any, name: str) -> None:
        self._tok = tok
        self.name = name

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        return str(self._tok.decode(ids, skip_special_tokens=True))


def load_tokenizer(source: str | None) -> tuple[PromptTokenizer, str | None]:
    """The tokenizer of a local model directory (or tokenizer.json file), offline.

    Returns ``(tokenizer, note)``; ``note`` explains why the approximation is used, if it is.
    """
    if not source:
        return WordTokenizer(), "no local tokenizer given; prompt lengths are approximate"
    path = Path(source).expanduser()
    file = path if path.is_file() else path / "tokenizer.json"
    note = f"{source} is not a local model directory; prompt lengths are approximate"
    if file.is_file():
        try:
            from tokenizers import Tokenizer

            return HFTokenizer(Tokenizer.from_file(str(file)), str(file)), None
        except Exception as exc:  # missing package, corrupt or newer-format file
            note = f"cannot read {file} ({exc}); prompt lengths are approximate"
    if path.is_dir() and (path / "tokenizer_config.json").exists():
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            return TransformersTokenizer(tok, str(path)), None
        except Exception as exc:
            note = f"cannot load the tokenizer from {path} ({exc}); prompt lengths are approximate"
    return WordTokenizer(), note


def model_dir_from_models_listing(body: bytes) -> str | None:
    """The ``root`` (model path) of the first model in a ``/v1/models`` response, if any."""
    try:
        data = json.loads(body)
        first = data["data"][0]
        root = first.get("root") or first.get("id")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None
    return str(root) if root else None
