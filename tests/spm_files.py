"""Real SentencePiece tokenizer files for tests, trained offline on a few dozen captions.

Tiny (vocab ~150), but trained by sentencepiece itself, so they are the same kind of file as the hub's:
- SigLIP 1's `spiece.model`: a unigram model, `<pad>`=0 `</s>`=1 `<unk>`=2, no BOS, the default nmt_nfkc
  normaliser with a dummy prefix (like google/siglip-base-patch16-224's), plus the hub's tokenizer_config.json.
- SigLIP 2's Gemma `tokenizer.model`: a BPE model, `<pad>`=0 `<eos>`=1 `<bos>`=2 `<unk>`=3 `<mask>`=4, identity
  normalisation, no dummy prefix, whitespace kept as is, digits split, byte fallback (Gemma's normaliser and
  trainer spec, as transformers' GemmaConverter lists it).
Training runs once per test session; the bytes are cached in this module.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

CAPTIONS = [
    "a photo of a cat", "a photo of a dog", "This is a photo of a cat.", "a black cat sitting on a red sofa",
    "two dogs playing in the snow", "a cup of coffee on a wooden table", "the real mountain view",
    "a rocket launching at night", "an old film camera", "a logo with blue letters", "Hello, World!",
    "it's a dog's life", "the year 1999 and 2024", "call 555-1234 now", "3 apples, 12 pears and 7 plums",
    "a man riding a bicycle down the street", "a bowl of fruit: apples, bananas; oranges?",
    "A TRAIN AT THE STATION", "children playing football in the park", "sunset over the ocean",
    "a close-up of a flower", "a plate of pasta with tomato sauce", "the cat sat on the mat",
    "a picture of a small bird on a branch", "a group of people standing around a table",
    "a red car parked next to a building", "snow on the mountains in winter", "a dog catching a frisbee",
    "café crème and a croissant", "le chat noir", "naïve résumé", "Ünïcödé téxt with àccents",
    "東京の猫", "猫の写真", "北京 上海", "🐱 cat", "🐶 dog and 🐱 cat", "Ωmega and δelta",
    "tabs\tand\nnewlines", "  leading and trailing spaces  ", "two  spaces   three", "quotes \"like this\" and 'this'",
    "100% sure #1 @home & more", "(parentheses) [brackets] {braces}", "a---b", "e-mail: someone@example.com",
]


def _train(vocab_size: int, **spec) -> bytes:
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CAPTIONS * 3), model_writer=buf, vocab_size=vocab_size,
                                   hard_vocab_limit=False, minloglevel=2, **spec)
    return buf.getvalue()


_CACHE: dict[str, bytes] = {}


def siglip_model_bytes(**spec) -> bytes:
    """spec: trainer/normaliser options over SigLIP's (e.g. remove_extra_whitespaces=False), one model each."""
    key = "siglip" + repr(sorted(spec.items()))
    if key not in _CACHE:
        _CACHE[key] = _train(150, **{"model_type": "unigram", "pad_id": 0, "eos_id": 1, "unk_id": 2, "bos_id": -1,
                                     **spec})
    return _CACHE[key]


def gemma_model_bytes() -> bytes:
    if "gemma" not in _CACHE:
        _CACHE["gemma"] = _train(
            # 256 byte pieces + 5 specials + characters + merges
            500, model_type="bpe", pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>",
            bos_piece="<bos>", unk_piece="<unk>", user_defined_symbols=["<mask>"],
            normalization_rule_name="identity", add_dummy_prefix=False, remove_extra_whitespaces=False,
            split_digits=True, byte_fallback=True, allow_whitespace_only_pieces=True,
            split_by_unicode_script=True, split_by_number=True, split_by_whitespace=True)
    return _CACHE["gemma"]



def _added(content: str, strip: bool) -> dict:
    return {"content": content, "lstrip": strip, "normalized": False, "rstrip": strip, "single_word": False,
            "special": True}


# Like google/siglip-base-patch16-224's tokenizer_config.json.
SIGLIP_CONFIG = {
    "added_tokens_decoder": {"1": _added("</s>", True), "2": _added("<unk>", True)},
    "tokenizer_class": "SiglipTokenizer", "eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>",
    "model_max_length": 64, "do_lower_case": True, "additional_special_tokens": [], "sp_model_kwargs": {},
    "clean_up_tokenization_spaces": True,
}
# Like google/siglip2-base-patch16-224's, trimmed: Gemma's defaults (BOS, no EOS, left padding) that SigLIP 2
# does not use, so a tokenizer that obeyed them would fail the tests.
GEMMA_CONFIG = {
    "added_tokens_decoder": {str(i): _added(t, False) for i, t in enumerate(["<pad>", "<eos>", "<bos>", "<unk>"])},
    "tokenizer_class": "GemmaTokenizer", "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
    "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False, "model_max_length": 10**30,
    "padding_side": "left", "spaces_between_special_tokens": False, "sp_model_kwargs": {},
}


def write_siglip_tokenizer(folder: Path, config: dict | None = SIGLIP_CONFIG, **spec) -> Path:
    """Write `spiece.model` (and tokenizer_config.json unless config is None) into folder; return the model path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "spiece.model"
    path.write_bytes(siglip_model_bytes(**spec))
    if config is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return path


def write_gemma_tokenizer(folder: Path, config: dict | None = GEMMA_CONFIG) -> Path:
    """Write Gemma's `tokenizer.model` (and tokenizer_config.json unless config is None); return the model path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tokenizer.model"
    path.write_bytes(gemma_model_bytes())
    if config is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return path


TRICKY_TEXTS = [
    "a photo of a cat",
    "the real mountain view",
    "Hello, World!!!",
    "it's a dog's life...",
    "a---b",
    "café crème",
    "東京の猫",
    "🐱 cat",
    "ÀÉÎ",
    "  two   spaces\tand\ttabs\n",
    "",
    "?!.",
    "   ",
    "1234 56",
    "A Photo Of A CAT",
    "unseen xyzzy qwv ЖЖЖ",
    "a\u00a0non-breaking\u3000ideographic space",
    "ﬁ ligature and ｆｕｌｌｗｉｄｔｈ",
    "▁already▁underlined ▁",
    "a </s> b",
    "x<unk>y",
    "</s> first",
    "last </s>",
    "<eos> and <BOS> and <mask>",
    "a photo of a cat " * 50,
]
