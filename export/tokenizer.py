"""The CLIP BPE tokenizer of SAM3, built offline from the vocabulary in the open_clip wheel.

``open_clip_torch`` ships ``bpe_simple_vocab_16e6.txt.gz`` (OpenAI CLIP's merges). From it we
build the 49408-token tokenizer SAM3's text encoder uses: 256 byte symbols, the same with
the end-of-word suffix ``</w>``, 48894 merges, then ``<|startoftext|>`` = 49406 (bos) and
``<|endoftext|>`` = 49407 (eos, pad, unk). Normalization and pre-tokenization are those of
transformers' ``CLIPTokenizer`` (NFC, whitespace runs → one space, lowercase; CLIP's split
regex; byte-level symbols).

- ``build_tokenizer_json``: a ``tokenizers`` file with truncation and padding fixed at
  ``TEXT_LENGTH`` (32), for the serving side (no transformers needed there);
- ``build_clip_tokenizer``: a transformers ``CLIPTokenizer`` saved into a checkpoint
  directory; ``save_sam3_processor`` saves it with a ``Sam3ImageProcessor`` of the model's
  image size, so ``Sam3Processor`` / ``Sam3TrackerProcessor.from_pretrained`` work offline on
  a tiny checkpoint (the tokenizer alone is not enough: they also need the image processor).
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

from sam3_spec import TEXT_LENGTH

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
BOS_ID, EOS_ID = 49406, 49407
VOCAB_SIZE = 49408
N_MERGES = VOCAB_SIZE - 2 * 256 - 2  # 48894, as OpenAI CLIP
SPLIT_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


class TokenizerBuildError(RuntimeError):
    """The CLIP vocabulary cannot be found or does not have the expected size."""


def bpe_path() -> Path:
    """Path of ``bpe_simple_vocab_16e6.txt.gz`` inside the installed open_clip package (not imported)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerBuildError(
            f"open_clip is not installed; install open_clip_torch (it ships the CLIP vocabulary {BPE_FILE})"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / BPE_FILE
    if not path.is_file():
        raise TokenizerBuildError(f"{path} is missing from the open_clip package; reinstall open_clip_torch")
    return path


def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2 byte → printable unicode symbol map (printable bytes map to themselves)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, codes)}


def load_vocab_merges(path: Path | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP vocab {token: id} (49408 entries) and merges [(a, b)] (48894) from the gz file."""
    lines = gzip.open(path or bpe_path()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE or vocab[BOS] != BOS_ID or vocab[EOS] != EOS_ID:
        raise TokenizerBuildError(
            f"{BPE_FILE} gave {len(vocab)} tokens (bos id {vocab.get(BOS)}), "
            f"expected {VOCAB_SIZE} with bos {BOS_ID}; the file is not CLIP's"
        )
    return vocab, merges


def build_tokenizer(context_length: int = TEXT_LENGTH, path: Path | None = None) -> Tokenizer:
    """``tokenizers.Tokenizer`` equal to transformers' CLIPTokenizer, padded/truncated to ``context_length``."""
    vocab, merges = load_vocab_merges(path)
    tok = Tokenizer(
        BPE(
            vocab=vocab,
            merges=merges,
            dropout=None,
            continuing_subword_prefix="",
            end_of_word_suffix="</w>",
            fuse_unk=False,
            unk_token=EOS,
        )
    )
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(
        [AddedToken(BOS, special=True, normalized=False), AddedToken(EOS, special=True, normalized=False)]
    )
    tok.post_processor = processors.RobertaProcessing(
        (EOS, EOS_ID), (BOS, BOS_ID), trim_offsets=False, add_prefix_space=False
    )
    tok.enable_truncation(max_length=context_length)
    tok.enable_padding(length=context_length, pad_id=EOS_ID, pad_token=EOS)
    return tok


def build_tokenizer_json(out_path: Path | str, context_length: int = TEXT_LENGTH) -> Path:
    """Write the serving tokenizer (``tokenizers`` JSON, fixed length ``context_length``) to ``out_path``."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    build_tokenizer(context_length).save(str(out_path))
    return out_path


def build_clip_tokenizer(save_dir: Path | str, context_length: int = TEXT_LENGTH) -> Path:
    """Save a transformers CLIPTokenizer built from the same vocabulary into ``save_dir``.

    Needs transformers (export extra). Returns ``save_dir``.
    """
    from transformers import CLIPTokenizer  # noqa: PLC0415 (optional: export extra)

    vocab, merges = load_vocab_merges()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=context_length)
    tokenizer.save_pretrained(str(save_dir))
    return Path(save_dir)


def save_sam3_processor(save_dir: Path | str, image_size: int, context_length: int = TEXT_LENGTH) -> Path:
    """Save a transformers Sam3Processor (CLIP tokenizer + Sam3ImageProcessor at ``image_size``).

    Writes tokenizer.json, tokenizer_config.json and processor_config.json into ``save_dir``.
    Needs transformers (export extra). Returns ``save_dir``.
    """
    from transformers import CLIPTokenizer  # noqa: PLC0415 (optional: export extra)
    from transformers.models.sam3.image_processing_sam3 import Sam3ImageProcessor  # noqa: PLC0415 (optional: export extra)
    from transformers.models.sam3.processing_sam3 import Sam3Processor  # noqa: PLC0415 (optional: export extra)

    vocab, merges = load_vocab_merges()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=context_length)
    image_processor = Sam3ImageProcessor(size={"height": image_size, "width": image_size})
    Sam3Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(str(save_dir))
    return Path(save_dir)
