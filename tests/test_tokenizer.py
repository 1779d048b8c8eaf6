"""The torch-free tokenizer against transformers' (the oracle), on real SentencePiece files trained offline."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
from spm_files import GEMMA_CONFIG, SIGLIP_CONFIG, TRICKY_TEXTS, write_gemma_tokenizer, write_siglip_tokenizer

from siglip_cli.errors import CheckpointError, UsageError
from siglip_cli.tokenizer import TOKENIZER_FILES, Tokenizer

transformers = pytest.importorskip("transformers")
LONG = TRICKY_TEXTS[-1]
assert len(LONG) > 500, "the last tricky text is the over-long one"


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("siglip")
    write_siglip_tokenizer(folder)
    return folder


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gemma")
    write_gemma_tokenizer(folder)
    return folder


def oracle(cls, folder, **kwargs):
    transformers.logging.set_verbosity_error()
    return cls.from_pretrained(folder, **kwargs)


def hf_ids(tok, texts, length) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SiglipTokenizer warns on a text that ends with "</s>": a case under test
        out = tok(list(texts), padding="max_length", max_length=length, truncation=True)["input_ids"]
    return np.array(out, dtype=np.int64)


def check_rows(ids: np.ndarray, tok: Tokenizer, texts) -> None:
    """Shape, dtype, EOS last, right padding (meaningful when pad != eos), the long text cut with EOS kept."""
    assert ids.shape == (len(texts), tok.length) and ids.dtype == np.int64
    for row, text in zip(ids, texts):
        n = len(tok.encode(text))
        assert row[n - 1] == tok.eos_id
        assert (row[n:] == tok.pad_id).all()
        if tok.pad_id != tok.eos_id:
            assert tok.pad_id not in row[:n], "padding only on the right"
    long_row = ids[texts.index(LONG)]
    assert long_row[-1] == tok.eos_id and len(tok.encode(LONG)) == tok.length
    assert tok.eos_id not in long_row[:-1] and tok.pad_id not in long_row[:-1]


@pytest.mark.parametrize("length", [16, 64])
@pytest.mark.parametrize("pad", ["</s>", "<pad>"])
def test_siglip_ids_equal_transformers(siglip_dir, length, pad):
    ref = transformers.SiglipTokenizer(vocab_file=str(siglip_dir / "spiece.model"), pad_token=pad)
    tok = Tokenizer(siglip_dir / "spiece.model", length, special={"pad_token": pad})
    ids = tok(TRICKY_TEXTS)
    np.testing.assert_array_equal(ids, hf_ids(ref, TRICKY_TEXTS, length))
    check_rows(ids, tok, TRICKY_TEXTS)
    assert tok.pad_id == (1 if pad == "</s>" else 0) and tok.eos_id == 1 and tok.kind == "siglip"


def test_siglip_tricky_cases_spelled_out(siglip_dir):
    """What transformers does, pinned down: the oracle test above would pass if both changed together."""
    tok = Tokenizer(siglip_dir / "spiece.model", 16, special={"pad_token": "<pad>"})
    sp = tok._sp

    def pieces(text):
        return [sp.id_to_piece(i) for i in tok.encode(text)]

    assert tok.encode("") == [1] and tok.encode("?!.") == [1] and tok.encode("   ") == [1]
    assert tok.encode("A Photo, of a CAT!") == tok.encode("a photo of a cat") == sp.encode("a photo of a cat") + [1]
    # A literal special token becomes its id and eats the spaces around it; the text after it has no "▁".
    x = sp.encode("x", out_type=str)
    assert pieces("x<unk>y")[: len(x) + 1] == x + ["<unk>"] and "".join(pieces("x<unk>y")[len(x) + 1:]) == "y</s>"
    assert pieces("</s> a cat")[0] == "</s>" and "".join(pieces("</s> a cat")[1:]) == "a▁cat</s>", "no lone '▁' first"
    assert tok.encode("last </s>") == tok.encode("last"), "no second EOS after a text that ends with one"
    assert tok.encode("</s>" * 20) == [1] * 15, "cut to length-1, then no EOS added after an EOS"
    assert tok.canonicalize("  Hello,\tWorld!!  it's ") == "hello world its"


@pytest.mark.parametrize("spec", [{"remove_extra_whitespaces": False}, {"add_dummy_prefix": False}])
@pytest.mark.parametrize("legacy", [True, False])
def test_siglip_other_normalisers_and_legacy(tmp_path, spec, legacy):
    """The unk-trick's result hangs on the model's normaliser; transformers' `legacy` flag changes nothing."""
    path = write_siglip_tokenizer(tmp_path, **spec)
    ref = transformers.SiglipTokenizer(vocab_file=str(path), pad_token="<pad>", legacy=legacy)
    tok = Tokenizer(path, 16, special={"pad_token": "<pad>"})
    texts = TRICKY_TEXTS + ["\x00</s> a", " x", "\u200b"]
    np.testing.assert_array_equal(tok(texts), hf_ids(ref, texts, 16))
    if "remove_extra_whitespaces" in spec:  # the trailing "▁" of "<unk>▁" survives: "" is one "▁" then EOS
        underline = tok._sp.piece_to_id("▁")
        assert tok.encode("") == [underline, 1]
        assert tok.encode("</s> a")[:2] == [1, tok._sp.piece_to_id("a")], "a lone first '▁' before </s> dropped"


@pytest.mark.parametrize("length", [16, 64])
def test_gemma_ids_equal_transformers(gemma_dir, length):
    gemma = oracle(transformers.GemmaTokenizer, gemma_dir, add_bos_token=False, add_eos_token=True,
                   padding_side="right")
    siglip2 = oracle(transformers.Siglip2Tokenizer, gemma_dir, add_bos_token=False, add_eos_token=True,
                     padding_side="right")  # lowercases itself, in its normaliser
    tok = Tokenizer(gemma_dir / "tokenizer.model", length)
    ids = tok(TRICKY_TEXTS)
    np.testing.assert_array_equal(ids, hf_ids(gemma, [t.lower() for t in TRICKY_TEXTS], length))
    # Siglip2Tokenizer lowercases after matching special tokens, so "<BOS>" stays text there: big_vision matches
    # none (it lowercases, then SentencePiece); the oracle above is what the design asks for.
    plain = [i for i, t in enumerate(TRICKY_TEXTS) if "<" not in t]
    np.testing.assert_array_equal(ids[plain], hf_ids(siglip2, [TRICKY_TEXTS[i] for i in plain], length))
    check_rows(ids, tok, TRICKY_TEXTS)
    assert (tok.kind, tok.pad_id, tok.eos_id) == ("gemma", 0, 1)
    assert 2 not in ids[:, 0], "no BOS"
    assert 2 not in ids[[i for i, t in enumerate(TRICKY_TEXTS) if "bos" not in t.lower()]]
    assert (ids[TRICKY_TEXTS.index("a photo of a cat")][-3:] == 0).all(), "padded on the right"


def test_gemma_rules(gemma_dir):
    tok = Tokenizer(gemma_dir / "tokenizer.model", 64)
    sp = tok._sp
    assert tok.canonicalize("Hello, World!") == "hello, world!", "lowercase only, punctuation kept"
    assert tok.encode("") == [1]
    assert tok.encode("A cat") == sp.encode("a cat") + [1] and sp.id_to_piece(sp.encode("a cat")[0]) == "a"
    assert tok.encode("a <EOS> b") == sp.encode("a ") + [1] + sp.encode(" b") + [1]
    assert tok.encode("  x") == sp.encode("  x") + [1], "whitespace kept as is"
    assert sp.id_to_piece(tok.encode("ŧ")[0]).startswith("<0x"), "byte fallback for an unseen character"


def test_batch_rows_equal_single_texts(siglip_dir, gemma_dir):
    for tok in (Tokenizer.from_folder(siglip_dir, 16), Tokenizer.from_folder(gemma_dir, 16)):
        batch = tok(TRICKY_TEXTS)
        for text, row in zip(TRICKY_TEXTS, batch):
            np.testing.assert_array_equal(row, tok([text])[0])
            ids = tok.encode(text)
            assert row.tolist() == ids + [tok.pad_id] * (16 - len(ids)), "always padded to the full length"
        assert tok([]).shape == (0, 16) and tok(("a cat",)).shape == (1, 16)


def test_from_folder_picks_the_kind_and_reads_the_ids_from_the_files(siglip_dir, gemma_dir, tmp_path):
    siglip, gemma = Tokenizer.from_folder(siglip_dir, 64), Tokenizer.from_folder(gemma_dir, 16)
    assert siglip.describe() == {"tokenizer": "siglip", "tokenizer_file": "spiece.model", "max_length": 64,
                                 "pad_id": 1, "eos_id": 1}
    assert gemma.describe() == {"tokenizer": "gemma", "tokenizer_file": "tokenizer.model", "max_length": 16,
                                "pad_id": 0, "eos_id": 1}
    assert siglip.vocab_size == siglip._sp.get_piece_size() != gemma.vocab_size
    assert siglip.path == siglip_dir / "spiece.model"
    assert {"spiece.model", "tokenizer.model"} <= set(TOKENIZER_FILES)

    # Both models in one folder: tokenizer_class decides; without it, spiece.model.
    both = tmp_path / "both"
    write_siglip_tokenizer(both)
    write_gemma_tokenizer(both)
    assert Tokenizer.from_folder(both, 8).kind == "gemma"
    write_siglip_tokenizer(both)
    assert Tokenizer.from_folder(both, 8).kind == "siglip"

    # config.json's (wrong) ids change nothing; a model with no json files takes transformers' defaults.
    bare = tmp_path / "bare"
    write_siglip_tokenizer(bare, config=None)
    (bare / "config.json").write_text(json.dumps({"text_config": {"bos_token_id": 49406, "eos_token_id": 49407,
                                                                  "pad_token_id": 1}, "eos_token_id": 49407}))
    assert (Tokenizer.from_folder(bare, 8).pad_id, Tokenizer.from_folder(bare, 8).eos_id) == (1, 1)


@pytest.mark.parametrize("config, token_map, pad_id", [
    ({**SIGLIP_CONFIG, "pad_token": "<pad>"}, None, 0),
    ({k: v for k, v in SIGLIP_CONFIG.items() if k != "added_tokens_decoder"}, {"pad_token": {"content": "<pad>"}}, 0),
    (SIGLIP_CONFIG, {"pad_token": "<pad>"}, 1),  # transformers 5 reads the map only without added_tokens_decoder
])
def test_special_tokens_come_from_the_json_files_as_transformers_reads_them(tmp_path, config, token_map, pad_id):
    write_siglip_tokenizer(tmp_path, config)
    if token_map:
        (tmp_path / "special_tokens_map.json").write_text(json.dumps(token_map))
    ref = oracle(transformers.AutoTokenizer, tmp_path)
    tok = Tokenizer.from_folder(tmp_path, 8)
    assert tok.pad_id == ref.pad_token_id == pad_id and tok.eos_id == ref.eos_token_id == 1
    np.testing.assert_array_equal(tok(TRICKY_TEXTS), hf_ids(ref, TRICKY_TEXTS, 8))


def test_gemma_special_tokens_from_config(tmp_path):
    write_gemma_tokenizer(tmp_path, {**GEMMA_CONFIG, "pad_token": "<unk>", "eos_token": "<mask>"})
    tok = Tokenizer.from_folder(tmp_path, 8)
    assert (tok.pad_id, tok.eos_id) == (3, 4)
    assert tok(["a"]).tolist() == [tok._sp.encode("a") + [4] + [3] * 6]


def one_line_error(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message and message
    return message


def test_missing_tokenizer_errors(tmp_path):
    with pytest.raises(CheckpointError) as e:
        Tokenizer.from_folder(tmp_path, 64)
    message = one_line_error(e)
    assert message.startswith(f"{tmp_path}: no tokenizer (spiece.model or tokenizer.model)")
    assert "siglip download-weights" in message

    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(CheckpointError) as e:
        Tokenizer.from_folder(tmp_path, 64)
    message = one_line_error(e)
    assert message.startswith(f"{tmp_path}: has tokenizer.json but not the SentencePiece model siglip reads "
                              f"(spiece.model or tokenizer.model)")


@pytest.mark.parametrize("damage", ["random", "truncated", "empty", "folder", "huge"])
def test_unreadable_model_file_is_one_line(tmp_path, damage):
    path = write_siglip_tokenizer(tmp_path)
    good = path.read_bytes()
    if damage == "random":
        path.write_bytes(np.random.default_rng(0).bytes(3000))
    elif damage == "truncated":
        path.write_bytes(good[: len(good) // 3])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "folder":
        path.unlink()
        path.mkdir()
    else:
        with open(path, "r+b") as f:
            f.truncate(65 * 2**20)  # sparse: no 65 MiB written
    with pytest.raises(CheckpointError) as e:
        Tokenizer(path, 64)
    message = one_line_error(e)
    assert message.startswith(f"{path}: not a readable SentencePiece model (")
    assert message.endswith("): re-download the checkpoint")
    reason = {"random": "(not a ModelProto)", "truncated": "(not a ModelProto)", "empty": "(an empty file)",
              "folder": "(Is a directory)", "huge": "(65 MiB, over the 64 MiB a tokenizer may take)"}[damage]
    assert reason in message


def test_bad_json_and_unknown_special_token(tmp_path):
    write_siglip_tokenizer(tmp_path, {**SIGLIP_CONFIG, "pad_token": "[PAD]"})
    with pytest.raises(CheckpointError) as e:
        Tokenizer.from_folder(tmp_path, 64)
    assert "pad_token '[PAD]' is not a piece" in one_line_error(e)

    (tmp_path / "tokenizer_config.json").write_text('{"pad_token": ')
    with pytest.raises(CheckpointError) as e:
        Tokenizer.from_folder(tmp_path, 64)
    message = one_line_error(e)
    assert message.startswith(f"{tmp_path / 'tokenizer_config.json'}: not readable JSON (")


def test_bad_arguments(siglip_dir):
    model = siglip_dir / "spiece.model"
    for length in (0, -1, True, 16.0):
        with pytest.raises(ValueError, match="length must be a positive int"):
            Tokenizer(model, length)
    with pytest.raises(ValueError, match="kind must be"):
        Tokenizer(model, 16, kind="clip")
    renamed = siglip_dir.parent / "renamed.model"
    renamed.write_bytes(model.read_bytes())
    with pytest.raises(ValueError, match="renamed.model"):
        Tokenizer(renamed, 16)
    assert Tokenizer(renamed, 16, kind="siglip").encode("a cat") == Tokenizer(model, 16).encode("a cat")

    tok = Tokenizer(model, 16)
    with pytest.raises(TypeError, match="not one str"):
        tok("a photo of a cat")
    for bad in ([b"bytes"], ["ok", None], [3]):
        with pytest.raises(TypeError, match="must be a str"):
            tok(bad)


@pytest.mark.parametrize("kind", ["siglip", "gemma"])
def test_text_that_is_not_unicode_is_a_one_line_error(siglip_dir, gemma_dir, kind):
    """sentencepiece raises a pybind11 cast error on a lone surrogate (what surrogateescape makes of bad bytes)."""
    tok = Tokenizer.from_folder(siglip_dir if kind == "siglip" else gemma_dir, 16)
    with pytest.raises(UsageError) as e:
        tok(["fine", "caf\udcc3 \udca9"])
    message = one_line_error(e)
    assert "character 3" in message and "not valid Unicode" in message
    assert tok.encode("a\x00b\ufffd")[-1] == 1, "NUL and U+FFFD are ordinary characters"


def test_import_is_cheap():
    code = ("import sys, siglip_cli.tokenizer; heavy = {'torch', 'sentencepiece', 'transformers', 'tokenizers'};"
            "print(sorted(heavy & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
