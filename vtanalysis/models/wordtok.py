"""A small word-level tokenizer built offline (no hub), for tiny test models and the demo model."""
from __future__ import annotations

from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

SPECIAL = ["<pad>", "<unk>", "<s>", "</s>"]
BASE_WORDS = (
    "user assistant system you are a helpful . , ? ! : ; ' \" ( ) [ ] / - inst "
    "what is the of in on at to and or it this that which how many there image picture photo "
    "describe color colour shape object objects left right top bottom above below middle center "
    "red green blue yellow purple orange white black gray brown pink cyan "
    "circle square triangle star cross ring small large big tiny yes no one two three four five six "
    "zero seven eight nine ten cat dog person man woman animal answer question word single with "
    "please short briefly"
).split()


def word_tokenizer(words=BASE_WORDS, extra_special=(), model_max_length: int = 4096,
                   named_special: dict[str, str] | None = None) -> PreTrainedTokenizerFast:
    """Word-level, lower-cased tokenizer: special tokens first, then `words` (deduplicated, in order).

    Special tokens (e.g. "<image>") are matched before splitting, so placeholders survive intact.
    Unknown words map to "<unk>". `named_special` adds special tokens that processors read as
    tokenizer attributes (InternVL: {"start_image_token": "<img>", ...} gives `tok.start_image_token`
    and `tok.start_image_token_id`).
    """
    named_special = named_special or {}
    specials = list(dict.fromkeys([*SPECIAL, *extra_special, *named_special.values()]))
    vocab = {tok: i for i, tok in enumerate(specials)}
    for word in words:
        vocab.setdefault(word.lower(), len(vocab))
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(specials)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        model_max_length=model_max_length,
        extra_special_tokens=dict(named_special) if named_special else list(extra_special),
    )
