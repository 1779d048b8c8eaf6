"""SigLIP's text tokenizers without torch or transformers: SentencePiece ids equal to transformers'.

Two rule sets, picked by the tokenizer file a checkpoint ships:
- "siglip" (SigLIP 1, `spiece.model`, a unigram model): transformers' SiglipTokenizer. Lowercase, delete ASCII
  punctuation, collapse whitespace (big_vision's canonicalisation), then its piece trick: encode
  `"<unk>" + "▁" + text` and drop the pieces of "<unk>", so the first word gets its "▁" whatever the model's
  dummy-prefix setting (transformers' `legacy` flag changes nothing, for that reason).
- "gemma" (SigLIP 2, Gemma's `tokenizer.model`, BPE with byte fallback): lowercase only (big_vision's `lower`,
  transformers' Siglip2Tokenizer), then plain SentencePiece.
Both: no BOS, EOS appended and kept when a long text is cut, padded on the right to the full length. The text
tower pools the LAST position with no mask, so padding to the longest text of a batch would change the vectors.
Ids come from the tokenizer files only; config.json's bos/eos ids (49406/49407) are not in the vocabulary.

Like transformers, a special token written in the text ("</s>", "<unk>", Gemma's "<eos>", ...) becomes that id.
"""

from __future__ import annotations

import json
import re
import string
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import CheckpointError, UsageError

# What download-weights fetches next to the weights; each is optional on the hub.
TOKENIZER_FILES = ["spiece.model", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"]
MODEL_FILES = {"spiece.model": "siglip", "tokenizer.model": "gemma"}  # the order from_folder prefers
MAX_MODEL_BYTES = 64 * 2**20  # the hub's 256k-piece models are about 4 MiB
SPIECE_UNDERLINE = "▁"
TOKEN_KEYS = ("pad_token", "eos_token", "unk_token", "bos_token", "mask_token")
# transformers' defaults: SiglipTokenizer pads with "</s>"; GemmaTokenizer's five specials are ids 0-4.
DEFAULTS = {
    "siglip": {"eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>"},
    "gemma": {"pad_token": "<pad>", "eos_token": "<eos>", "bos_token": "<bos>", "unk_token": "<unk>",
              "mask_token": "<mask>"},
}
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_WHITESPACE = re.compile(r"\s+")


class Tokenizer:
    """Texts -> (T, length) int64 ids for SigLIP's text tower."""

    def __init__(self, model_file: Path, length: int, kind: str | None = None, special: dict | None = None):
        self.path = Path(model_file)
        kind = MODEL_FILES.get(self.path.name) if kind is None else kind
        if kind not in DEFAULTS:
            raise ValueError(f"kind must be 'siglip' or 'gemma' (or None for spiece.model/tokenizer.model), "
                             f"got {kind!r} for {self.path.name}")
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"length must be a positive int, got {length!r}")
        self.kind, self.length = kind, length
        self._sp = _load(self.path)
        self.vocab_size = self._sp.get_piece_size()
        tokens = {**DEFAULTS[kind], **{k: v for k, v in (special or {}).items() if k in DEFAULTS[kind] and v}}
        self.eos_id = self._piece_id(tokens["eos_token"], "eos_token")
        self.pad_id = self._piece_id(tokens["pad_token"], "pad_token")
        # The special tokens transformers cuts out of the text before SentencePiece sees it (its added tokens).
        self._special = {tok: self._sp.piece_to_id(tok) for tok in tokens.values() if self._in_vocab(tok)}
        self._split_re = re.compile("(" + "|".join(map(re.escape, sorted(self._special, key=len, reverse=True)))
                                    + ")") if self._special else None
        self._unk = tokens["unk_token"]
        self._unk_len = len(self._sp.encode(self._unk))
        self._underline_id = self._sp.piece_to_id(SPIECE_UNDERLINE) if self._in_vocab(SPIECE_UNDERLINE) else None

    @classmethod
    def from_folder(cls, folder: Path, length: int) -> Tokenizer:
        """The tokenizer of a checkpoint folder: its SentencePiece model, special tokens from its json files."""
        folder = Path(folder)
        special = read_special_tokens(folder)
        found = [name for name in MODEL_FILES if (folder / name).is_file()]
        if not found:
            if (folder / "tokenizer.json").is_file():
                raise CheckpointError(f"{folder}: has tokenizer.json but not the SentencePiece model siglip reads "
                                      f"(spiece.model or tokenizer.model): fetch it with "
                                      f"`siglip download-weights <id>`, which now downloads the tokenizer too")
            raise CheckpointError(f"{folder}: no tokenizer (spiece.model or tokenizer.model): fetch it with "
                                  f"`siglip download-weights <id>`, which now downloads the tokenizer too")
        name = found[0]
        if len(found) > 1 and special.get("tokenizer_class") in ("GemmaTokenizer", "Siglip2Tokenizer"):
            name = "tokenizer.model"
        return cls(folder / name, length, special=special)

    def canonicalize(self, text: str) -> str:
        """The text as the model was trained to read it (before the pieces)."""
        text = text.lower()
        if self.kind == "gemma":
            return text
        text = _WHITESPACE.sub(" ", text.translate(_PUNCTUATION))
        return text.strip()

    def encode(self, text: str) -> list[int]:
        """Ids of one text: EOS last, at most `length` of them, not padded."""
        _check_text(text)
        if self.kind == "gemma":
            ids = []
            for chunk, special in self._split(self.canonicalize(text)):
                ids.extend([self._special[chunk]] if special else self._sp.encode(chunk))
        else:
            ids = self._siglip_ids(text)
        ids = ids[: self.length - 1]
        # SiglipTokenizer adds no second EOS after one the text itself ends with ("... </s>"); Gemma's template does.
        if self.kind == "gemma" or not ids or ids[-1] != self.eos_id:
            ids.append(self.eos_id)
        return ids

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """(T, length) int64 ids, each row right-padded with pad_id to the full length."""
        if isinstance(texts, str):
            raise TypeError("Tokenizer() takes a sequence of texts, not one str: wrap it in a list")
        out = np.full((len(texts), self.length), self.pad_id, dtype=np.int64)  # (T, L)
        for row, text in zip(out, texts):
            ids = self.encode(text)
            row[: len(ids)] = ids
        return out

    def describe(self) -> dict:
        """What an output's metadata records about the tokenizer."""
        return {"tokenizer": self.kind, "tokenizer_file": self.path.name, "max_length": self.length,
                "pad_id": self.pad_id, "eos_id": self.eos_id}

    def __repr__(self) -> str:
        return f"Tokenizer({self.path.name!r}, kind={self.kind!r}, length={self.length}, vocab={self.vocab_size})"

    # transformers' SiglipTokenizer.tokenize -> PreTrainedTokenizer.tokenize -> SiglipTokenizer._tokenize, step by step.
    def _siglip_ids(self, text: str) -> list[int]:
        ids, special_at = [], set()  # ids as they come, and which of them are special tokens cut from the text
        for chunk, special in self._split(SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " ")):
            if special:
                special_at.add(len(ids))
                ids.append(self._special[chunk])
                continue
            # Canonicalised after the "▁" is prepended, so leading whitespace leaves "▁ " (that order matters).
            found = self._sp.encode(self._unk + self.canonicalize(chunk))
            ids.extend(found[self._unk_len:] if len(found) >= self._unk_len else found)
        if len(ids) > 1 and ids[0] == self._underline_id and 1 in special_at:  # "</s> a": no lone "▁" first
            ids = ids[1:]
        return ids

    def _split(self, text: str) -> list[tuple[str, bool]]:
        """(chunk, is_special) in order, empty chunks dropped.

        SiglipTokenizer's special tokens also strip the whitespace next to them (lstrip/rstrip); its canonicalisation
        strips every chunk anyway, so that needs no code here.
        """
        parts = self._split_re.split(text) if self._split_re else [text]  # odd positions are special tokens
        return [(part, i % 2 == 1) for i, part in enumerate(parts) if part]

    def _in_vocab(self, token: str) -> bool:
        return self._sp.id_to_piece(self._sp.piece_to_id(token)) == token

    def _piece_id(self, token: str, role: str) -> int:
        if not self._in_vocab(token):
            raise CheckpointError(f"{self.path}: the {role} {token!r} is not a piece of this SentencePiece model: "
                                  f"fix {role} in tokenizer_config.json/special_tokens_map.json, or re-download "
                                  f"the checkpoint")
        return self._sp.piece_to_id(token)


def read_special_tokens(folder: Path) -> dict:
    """Special token strings (and tokenizer_class) from tokenizer_config.json and special_tokens_map.json.

    As transformers 5 reads them: special_tokens_map.json overrides only a config with no added_tokens_decoder.
    """
    config = _read_json(folder / "tokenizer_config.json")
    if "added_tokens_decoder" not in config:
        config.update(_read_json(folder / "special_tokens_map.json"))
    out = {}
    for key in TOKEN_KEYS:
        value = config.get(key)
        value = value.get("content") if isinstance(value, dict) else value  # a saved AddedToken
        if isinstance(value, str) and value:
            out[key] = value
    if isinstance(config.get("tokenizer_class"), str):
        out["tokenizer_class"] = config["tokenizer_class"]
    return out


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path}: not readable JSON ({str(e).splitlines()[0]}): re-download the checkpoint")
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not a JSON object: re-download the checkpoint")
    return data


def _load(path: Path):
    import sentencepiece  # here, not at the top: `import siglip_cli.tokenizer` stays cheap

    def fail(reason: str) -> CheckpointError:
        return CheckpointError(f"{path}: not a readable SentencePiece model ({reason}): re-download the checkpoint")

    try:
        size = path.stat().st_size
        if size > MAX_MODEL_BYTES:
            raise fail(f"{size / 2**20:.0f} MiB, over the {MAX_MODEL_BYTES // 2**20} MiB a tokenizer may take")
        data = path.read_bytes()
        if not data:
            raise fail("an empty file")
    except OSError as e:
        raise fail(e.strerror or type(e).__name__) from None
    sp = sentencepiece.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(data)
    except (RuntimeError, ValueError) as e:  # status errors "INTERNAL: src/x.cc(109) [check] message", bad UTF-8
        first = (str(e).splitlines() or [""])[0]
        reason = "not a ModelProto" if "Parse" in first else re.sub(r"^\w+: (\S+\.cc\(\d+\) )?", "", first).strip()
        raise fail(reason or "sentencepiece refused it") from None
    return sp


def _check_text(text) -> None:
    if not isinstance(text, str):
        raise TypeError(f"a text must be a str, not {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate, e.g. from bytes that were not UTF-8 (surrogateescape)
        raise UsageError(f"text {text[:40]!r}: character {e.start} ({text[e.start]!r}) is not valid Unicode, "
                         f"e.g. bytes that were not UTF-8: pass UTF-8 text") from None
