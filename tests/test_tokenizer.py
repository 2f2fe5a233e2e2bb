"""CLIP tokenizer built offline (export/tokenizer.py) and the serving TextTokenizer vs transformers and open_clip."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "triton_repo" / "sam3" / "1"))
sys.path.insert(0, str(ROOT))

from errors import InputError  # noqa: E402
from text_tokens import TextTokenizer, TokenizerFileError  # noqa: E402

from export.tokenizer import (  # noqa: E402
    BOS_ID,
    EOS_ID,
    VOCAB_SIZE,
    build_clip_tokenizer,
    build_tokenizer_json,
    load_vocab_merges,
    save_sam3_processor,
)
from sam3_spec import TEXT_LENGTH  # noqa: E402

TEXTS = [
    "cat",
    "a red car",
    "Person",
    "TRAFFIC LIGHT",
    "dog's tail",
    "it's what they'll do",
    "hello, world!",
    "naïve café",
    "Crème Brûlée",
    "emoji 😀 party 🎉",
    "日本語のテキスト",
    "123 apples and 4.5 oranges",
    "   leading and trailing   ",
    "tab\tand\nnew  line",
    "hyphen-ated words",
    "C++ & Python",
    "#hashtag @mention",
    "ÄÖÜ ß straße",
    "100% [brackets] {braces}",
    "supercalifragilisticexpialidocious",
    "visual",
    "a photo of " * 20 + "a very long prompt that must be truncated",
]


@pytest.fixture(scope="module")
def text_tokenizer(tmp_path_factory):
    return TextTokenizer.from_file(build_tokenizer_json(tmp_path_factory.mktemp("tok") / "tokenizer.json"))


@pytest.fixture(scope="module")
def clip_tokenizer(tmp_path_factory):
    from transformers import CLIPTokenizer  # noqa: PLC0415 (optional: export extra)

    return CLIPTokenizer.from_pretrained(str(build_clip_tokenizer(tmp_path_factory.mktemp("clip"))))


def test_vocabulary_layout():
    vocab, merges = load_vocab_merges()
    assert len(vocab) == VOCAB_SIZE and len(merges) == 48894
    assert vocab["<|startoftext|>"] == BOS_ID == 49406 and vocab["<|endoftext|>"] == EOS_ID == 49407
    assert vocab["a"] == 64 and vocab["a</w>"] == 320


def test_ids_match_transformers_clip_tokenizer(text_tokenizer, clip_tokenizer):
    ids, mask = text_tokenizer.encode(TEXTS)
    ref = clip_tokenizer(TEXTS, padding="max_length", max_length=TEXT_LENGTH, truncation=True, return_tensors="np")
    assert ids.shape == mask.shape == (len(TEXTS), TEXT_LENGTH) and ids.dtype == mask.dtype == np.int64
    np.testing.assert_array_equal(ids, ref["input_ids"])
    np.testing.assert_array_equal(mask, ref["attention_mask"])


def test_ids_match_sam3_processor_call_for_short_texts(text_tokenizer, clip_tokenizer):
    short = TEXTS[:-1]  # Sam3Processor pads to 32 without truncation
    ref = clip_tokenizer(short, padding="max_length", max_length=TEXT_LENGTH, return_tensors="np")
    np.testing.assert_array_equal(text_tokenizer.encode(short)[0], ref["input_ids"])


def test_ids_match_open_clip(text_tokenizer):
    from open_clip.tokenizer import SimpleTokenizer  # noqa: PLC0415 (optional: export extra)

    ids, mask = text_tokenizer.encode(TEXTS)
    ref = SimpleTokenizer(context_length=TEXT_LENGTH)(TEXTS).numpy()  # pads with 0
    np.testing.assert_array_equal(np.where(mask == 1, ids, 0), ref)


def test_truncation_keeps_bos_and_eos(text_tokenizer):
    ids, mask = text_tokenizer.encode([TEXTS[-1], "cat"])
    assert ids[0, 0] == BOS_ID and ids[0, -1] == EOS_ID and mask[0].all()
    np.testing.assert_array_equal(ids[1, :3], [BOS_ID, 2368, EOS_ID])
    assert (ids[1, 3:] == EOS_ID).all() and mask[1].sum() == 3


def test_case_and_whitespace_are_cleaned(text_tokenizer):
    ids, _ = text_tokenizer.encode(["Red  CAR", "red car", "\tred\n car "])
    assert (ids == ids[0]).all()


@pytest.mark.parametrize(
    "texts, words",
    [
        ([""], "text\\[0\\] is empty"),
        (["cat", "   \n"], "text\\[1\\] is empty"),
        (["x" * 1001], "1001 characters, over the 1000 limit"),
        ([b"cat"], "must be a string"),
    ],
)
def test_bad_texts_raise_input_error(text_tokenizer, texts, words):
    with pytest.raises(InputError, match=words):
        text_tokenizer.encode(texts)


def test_tokenizer_without_fixed_padding_is_refused(tmp_path, text_tokenizer):
    path = tmp_path / "tokenizer.json"
    text_tokenizer.tokenizer.save(str(path))
    data = json.loads(path.read_text())
    data["padding"] = None
    path.write_text(json.dumps(data))
    with pytest.raises(TokenizerFileError, match="fixed length"):
        TextTokenizer.from_file(path)


def test_saved_sam3_processor_loads_offline(tmp_path, text_tokenizer):
    from transformers import Sam3Processor, Sam3TrackerProcessor  # noqa: PLC0415 (optional: export extra)

    save_sam3_processor(tmp_path, image_size=224)
    processor = Sam3Processor.from_pretrained(str(tmp_path))
    assert processor.target_size == 224 and Sam3TrackerProcessor.from_pretrained(str(tmp_path)).target_size == 224
    out = processor(text=["a red car", "cat"], return_tensors="np")
    np.testing.assert_array_equal(out["input_ids"], text_tokenizer.encode(["a red car", "cat"])[0])
