"""GPT-2's byte-pair encoding through tiktoken, built offline from the bundled ranks file.

tiktoken's own ``get_encoding("gpt2")`` downloads its vocabulary at run time; this does not.
The ranks file's origin and licence are in ``gpt2reg/assets/README.md``.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import tiktoken
from tiktoken.load import load_tiktoken_bpe

EOT_TOKEN = "<|endoftext|>"
EOT_ID = 50256
# GPT-2's pre-tokenizer split pattern, as in tiktoken's openai_public.gpt2.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@lru_cache(maxsize=1)
def get_tokenizer() -> tiktoken.Encoding:
    """The GPT-2 tokenizer (50,257 tokens; ``<|endoftext|>`` is 50256), no network needed."""
    ranks_file = resources.files("gpt2reg") / "assets" / "gpt2.tiktoken"
    with resources.as_file(ranks_file) as path:
        ranks = load_tiktoken_bpe(str(path))
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={EOT_TOKEN: EOT_ID},
        explicit_n_vocab=50257,
    )
