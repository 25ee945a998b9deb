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


def word_tokenizer(words=BASE_WORDS, extra_special=(), model_max_length: int = 4096) -> PreTrainedTokenizerFast:
    """Word-level, lower-cased tokenizer: special tokens first, then `words` (deduplicated, in order).

    Special tokens (e.g. "<image>") are matched before splitting, so placeholders survive intact.
    Unknown words map to "<unk>".
    """
    specials = list(dict.fromkeys([*SPECIAL, *extra_special]))
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
        extra_special_tokens=list(extra_special),
    )
