"""The toy world's tokenizer: a byte-level BPE trained on the world's text with `tokenizers`.

GPT-2's scheme (byte-level pre-tokenizer, a space belongs to the word after it, `<|endoftext|>` as
BOS, EOS and padding), so the memory-injection convention "the target is the first token of
' ' + answer" means the same thing here as on GPT-2. The vocabulary is kept small on purpose: the
template words become whole tokens, while the made-up names stay split into a few sub-word pieces,
as multi-token entities are in GPT-2 (the paper's memories are several tokens long).
"""

from __future__ import annotations

from typing import Iterable

from jaxinterp.checks import is_integer

BOS = "<|endoftext|>"
# The BPE trainer allocates a table of vocab_size entries before it reads a word: 10**12 aborted the
# process (a Rust out-of-memory abort, no Python error). A vocabulary this large is never filled
# anyway (the built-in world's text stops at about 1100 tokens).
MAX_VOCAB = 2**20


def train_tokenizer(sentences: Iterable[str], *, vocab_size: int = 512, model_max_length: int = 64):
    """A transformers `PreTrainedTokenizerFast` (saved by `save_pretrained`, read by AutoTokenizer)
    holding a byte-level BPE of at most `vocab_size` tokens trained on `sentences`.

    `model_max_length`: the context of the model it serves (its n_positions, as `train` passes it), what
    transformers warns past and truncates to; a fixed 64 let a 128-position model's prompts be warned
    about and a 32-position model's go unwarned."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if not is_integer(vocab_size) or not 300 <= vocab_size <= MAX_VOCAB:
        raise ValueError(f"vocab_size must be at least 300 (256 bytes, BOS and some merges) and at most {MAX_VOCAB}, "
                         f"an integer; got {vocab_size!r}")
    if not is_integer(model_max_length) or model_max_length < 1:
        raise ValueError(f"model_max_length: expected a positive integer (the model's n_positions), "
                         f"got {model_max_length!r}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(sentences), trainer=trainer)
    if tok.token_to_id(BOS) != 0:
        raise RuntimeError("the BPE trainer did not put <|endoftext|> at id 0")  # GPT-2 configs say bos=eos=0
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=BOS, pad_token=BOS,
                                   unk_token=BOS, model_max_length=int(model_max_length))


def encode(tokenizer, text: str, *, bos: bool = True) -> list[int]:
    """Token ids of `text` (BOS first when asked), without any special-token template."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ([tokenizer.bos_token_id] if bos else []) + list(ids)


def answer_ids(tokenizer, answer: str) -> list[int]:
    """The ids of ' ' + answer, as the answer follows a prompt."""
    return encode(tokenizer, " " + answer, bos=False)
