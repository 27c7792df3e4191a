"""Text generation: options, the sampler, stop strings, streaming, and the decode loop over any engine.

Pure Python and numpy: options, the sampler, stop strings and streamed text, prompt preparation and
the decode loop (``decode``), which drives any ``gpt2reg.decoding.Engine`` - so the torch-free ONNX
runtime reuses all of it with its own engine, and the server's batcher the same sampler and stops.
``generate`` decodes a torch ``GPT`` (this module imports torch only inside it, through
``gpt2reg.torch_backend``).

Sampling runs on numpy with one random generator per sequence, seeded by ``(seed, sample_index)``:
a sequence's tokens do not depend on what else is in the batch, so batched output equals running each
prompt alone, streamed equals not streamed, and a torch and an ONNX model pick the same tokens from
the same logits.
"""

from __future__ import annotations

import codecs
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InputError
from .memory import check_fits
from .numbers import check_number
from .tokenizer import EOT_ID, EOT_TOKEN, encode, get_tokenizer

if TYPE_CHECKING:
    from .decoding import Engine
    from .model import GPT

Prompt = str | Sequence[int]
StreamCallback = Callable[[int, str], None]  # (sequence index, newly final text)


class PromptTruncatedWarning(UserWarning):
    """A prompt did not fit the context with the requested new tokens; its oldest tokens were dropped."""


# -- options ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenerationOptions:
    """What a generation call is asked for: how the next token is picked, how many, seeds and samples, when to stop.

    One object for ``generate``, ``OnnxGPT.generate``, ``decode``, the CLI and the server, which also take
    its fields as keyword arguments. Picking is greedy, or temperature, then top-k, then top-p
    (composable); ``temperature == 0`` and ``top_k == 1`` are greedy too. A sequence stops at
    ``eos_token_id`` (None: never), at the first of the ``stop`` strings (one string or several), or after
    ``max_new_tokens``. ``seed`` makes sampling reproducible (None: a fresh one); ``num_samples`` per prompt.
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    greedy: bool = False
    max_new_tokens: int = 64
    seed: int | None = None
    num_samples: int = 1
    stop: Sequence[str] = ()  # kept as a tuple
    eos_token_id: int | None = EOT_ID

    def __post_init__(self) -> None:
        check_number("temperature", self.temperature, 0)  # 0 means greedy
        if self.top_k is not None:
            check_number("top_k", self.top_k, 1, integer=True)
        if self.top_p is not None:
            check_number("top_p", self.top_p, 0, 1, low_open=True)
        # 0: the prompt alone (the server's echo scores a prompt without generating); generate needs >= 1
        check_number("max_new_tokens", self.max_new_tokens, 0, integer=True)
        if self.seed is not None:
            check_number("seed", self.seed, 0, integer=True)  # any size: numpy takes 128-bit entropy too
        check_number("num_samples", self.num_samples, 1, integer=True)
        stops = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        if any(not isinstance(s, str) or not s for s in stops):
            raise InputError(f"stop strings must be non-empty text, got {list(stops)!r}")
        object.__setattr__(self, "stop", stops)

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature == 0 or self.top_k == 1

    @classmethod
    def of(cls, options: GenerationOptions | None = None, **fields: Any) -> GenerationOptions:
        """``options`` (default ones when None) with ``fields`` replaced: what the keyword arguments build."""
        return replace(options, **fields) if options is not None else cls(**fields)


def filter_logits(logits: np.ndarray, options: GenerationOptions) -> np.ndarray:
    """Temperature-scaled logits (float64, last axis = vocabulary) with tokens outside top-k/top-p at -inf.

    The row's maximum is subtracted before dividing by the temperature, so every score is <= 0 and the
    best is exactly 0: a tiny temperature (1e-320) sends the others to -inf instead of overflowing to
    inf - inf = NaN, which makes it the greedy choice it tends to (ties with the best share the mass),
    and a huge one tends to uniform. Any accepted temperature therefore gives a valid distribution.

    top-k keeps ties with the k-th largest; top-p keeps the smallest set of most likely tokens whose
    probability reaches ``top_p`` (at least one token).
    """
    scores = np.array(logits, dtype=np.float64)
    scores -= scores.max(axis=-1, keepdims=True)
    if options.temperature not in (0, 1):
        with np.errstate(over="ignore", under="ignore"):  # -x / tiny -> -inf, tiny / huge -> -0.0: both wanted
            scores /= options.temperature
    if options.top_k is not None and options.top_k < scores.shape[-1]:
        kth = -np.partition(-scores, options.top_k - 1, axis=-1)[..., options.top_k - 1 : options.top_k]
        scores[scores < kth] = -np.inf
    if options.top_p is not None and options.top_p < 1:
        flat = scores.reshape(-1, scores.shape[-1])
        for row in flat:
            row[_outside_nucleus(row, options.top_p)] = -np.inf
    return scores


def _outside_nucleus(row: np.ndarray, top_p: float) -> np.ndarray:
    """Indices outside the top-p nucleus of one row of scores (ties at its edge in index order).

    Without sorting the vocabulary: the mass of each power-of-two band of probabilities (the float64
    exponent bits) finds the band where the running mass from the top reaches ``top_p``; every token
    above it is in, and only that band's tokens are sorted. Sorting the nucleus cost ~1 ms per row when
    it held thousands of tokens.
    """
    probs = np.exp(row - row.max())
    probs /= probs.sum()
    band = probs.view(np.int64) >> 52  # the biased exponent: probs in [2**(band-1023), 2**(band-1022))
    reached = np.cumsum(np.bincount(band, weights=probs)[::-1])  # from the most likely band down
    edge_index = min(int(np.searchsorted(reached, top_p)), len(reached) - 1)
    edge = len(reached) - 1 - edge_index
    outside = band < edge
    candidates = np.flatnonzero(band == edge)
    order = candidates[np.argsort(-probs[candidates], kind="stable")]
    mass = (reached[edge_index - 1] if edge_index else 0.0) + np.cumsum(probs[order])
    keep = min(int(np.searchsorted(mass, top_p)) + 1, len(order))
    outside[order[keep:]] = True
    return outside


def weights(logits: np.ndarray, options: GenerationOptions) -> np.ndarray:
    """The distribution a token is sampled from, unnormalized (float64, the most likely token's weight
    is 1): what ``probabilities`` divides by its sum, and all a sampler needs."""
    if options.is_greedy:
        probs = np.zeros(np.shape(logits), dtype=np.float64)
        np.put_along_axis(probs, np.argmax(logits, axis=-1)[..., None], 1.0, axis=-1)
        return probs
    scores = filter_logits(logits, options)  # a new array whose best score is exactly 0
    return np.exp(scores, out=scores)


def probabilities(logits: np.ndarray, options: GenerationOptions) -> np.ndarray:
    """The distribution a token is sampled from, after temperature, top-k and top-p (float64)."""
    probs = weights(logits, options)
    return probs / probs.sum(axis=-1, keepdims=True)


DRAW_BLOCK = 256  # tokens per block of the two-level inverse CDF (``draw``)


def draw(w: np.ndarray, u: float) -> int:
    """The token at quantile ``u`` in [0, 1) of the weights ``w`` (one row): inverse-CDF sampling.

    Two levels: the blocks' sums, then the one block ``u`` falls in. A running sum over the whole
    vocabulary is a chain of dependent additions (0.23 ms for 50k on the AMD EPYC, most of a row's
    sampling); block sums vectorize. A token of weight 0 (filtered out) is never drawn.
    """
    starts = np.arange(0, len(w), DRAW_BLOCK)
    blocks = np.cumsum(np.add.reduceat(w, starts))
    target = u * blocks[-1]
    b = min(int(np.searchsorted(blocks, target, side="right")), len(blocks) - 1)
    while b and blocks[b] == blocks[b - 1]:  # rounding carried the target into an empty block
        b -= 1
    block = w[starts[b] : starts[b] + DRAW_BLOCK]
    i = int(np.searchsorted(np.cumsum(block), target - (blocks[b - 1] if b else 0.0), side="right"))
    if i >= len(block):  # rounding carried the target past the block's end: its last token with weight
        i = int(np.flatnonzero(block)[-1])
    return int(starts[b]) + i


class Sampler:
    """Picks next tokens for a batch; sequence ``i`` draws from its own generator seeded ``(seed, sample_index[i])``."""

    def __init__(self, options: GenerationOptions, sample_indices: Sequence[int], seed: int | None = None) -> None:
        if seed is not None:
            check_number("seed", seed, 0, integer=True)  # any size: numpy takes 128-bit entropy too
        self.options = options
        self.seed = int(np.random.SeedSequence().entropy) if seed is None else int(seed)
        self._rngs = [np.random.default_rng([self.seed, int(i)]) for i in sample_indices]

    def __call__(self, logits: np.ndarray, rows: Sequence[int] | None = None) -> list[int]:
        """One token per row of ``logits`` (batch, vocab); row ``j`` is sequence ``rows[j]`` (default: ``j``)."""
        if self.options.is_greedy:
            return [int(t) for t in np.argmax(logits, axis=-1)]
        return [draw(weights(row, self.options), self._rngs[j if rows is None else rows[j]].random())
                for j, row in enumerate(logits)]


# -- text: stop strings and streaming -----------------------------------------------------------


class TextStream:
    """Decodes one sequence's tokens into text as they come: whole UTF-8 characters only, and text
    that might be the start of a stop string is held back until it is known not to be one."""

    def __init__(self, stop: Sequence[str] = (), decode_bytes: Callable[[int], bytes] | None = None) -> None:
        self.stop = [s for s in stop if s]
        self._decode_bytes = decode_bytes or get_tokenizer().decode_single_token_bytes
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""  # decoded so far (cut at a stop string once one is found)
        self.emitted = 0  # characters of ``text`` already handed out
        self.stopped = False
        self._searched = 0  # stop strings cannot start before this index any more

    def push(self, token: int) -> str:
        """Add a generated token; returns the text that became final (may be empty)."""
        self.text += self._utf8.decode(self._decode_bytes(token))
        return self._release(final=False)

    def finish(self) -> str:
        """End of the sequence: flush incomplete bytes and held-back text."""
        if not self.stopped:
            self.text += self._utf8.decode(b"", final=True)
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        if self.stop and not self.stopped:
            longest = max(len(s) for s in self.stop)
            found = [i for i in (self.text.find(s, self._searched) for s in self.stop) if i >= 0]
            if found:
                self.text = self.text[: min(found)]
                self.stopped = True
            else:
                self._searched = max(0, len(self.text) - longest + 1)
        end = len(self.text) if final or self.stopped else len(self.text) - self._held_back()
        piece = self.text[self.emitted : end]
        self.emitted = max(self.emitted, end)
        return piece

    def _held_back(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop string."""
        for n in range(min(len(self.text), max((len(s) for s in self.stop), default=1) - 1), 0, -1):
            tail = self.text[-n:]
            if any(s.startswith(tail) for s in self.stop):
                return n
        return 0


# -- prompts and results ------------------------------------------------------------------------


def encode_prompts(prompt: Prompt | Sequence[Prompt], vocab_size: int) -> list[list[int]]:
    """A string, token ids, or a list of either -> one list of token ids per prompt.

    ``<|endoftext|>`` in a string is the special token, so ``"<|endoftext|>"`` starts an
    unconditional sample as GPT-2 was trained to.
    """
    if isinstance(prompt, str) or (isinstance(prompt, Sequence) and prompt and _is_token_id(prompt[0])):
        prompts: list[Any] = [prompt]
    elif hasattr(prompt, "tolist"):  # a tensor or array: (seq,) or (batch, seq)
        ids = prompt.tolist()
        prompts = [ids] if ids and _is_token_id(ids[0]) else list(ids)
    else:
        prompts = list(prompt)
    if not prompts:
        raise InputError("no prompt given")
    encoded = []
    for i, p in enumerate(prompts):
        label = "the prompt" if len(prompts) == 1 else f"prompt {i + 1}"
        if isinstance(p, str):
            ids = encode(p, special=True)
        elif hasattr(p, "tolist") or isinstance(p, Sequence):
            ids = p.tolist() if hasattr(p, "tolist") else list(p)
            if not all(_is_token_id(t) for t in ids):
                raise InputError(f"{label} must be a string or a list of token ids (ints)")
        else:
            raise InputError(f"{label} must be a string or a list of token ids, got {type(p).__name__}")
        if not ids:
            raise InputError(f"{label} is empty; give some text (or \"{EOT_TOKEN}\" for an unconditional sample)")
        bad = [t for t in ids if not 0 <= t < vocab_size]
        if bad:
            raise InputError(f"{label} has token id {bad[0]}, outside the model's vocabulary of {vocab_size}")
        encoded.append([int(t) for t in ids])
    return encoded


def _is_token_id(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def fit_context(prompts: list[list[int]], block_size: int, max_new_tokens: int) -> list[list[int]]:
    """Keep the most recent tokens of each prompt so that it and ``max_new_tokens`` fit the context."""
    check_number("max_new_tokens", max_new_tokens, 1, integer=True)
    room = block_size - max_new_tokens
    if room < 1:
        raise InputError(
            f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the context of {block_size} tokens; "
            f"ask for at most {block_size - 1}"
        )
    fitted = []
    for i, ids in enumerate(prompts):
        if len(ids) > room:
            label = "the prompt" if len(prompts) == 1 else f"prompt {i + 1}"
            warnings.warn(
                f"{label} has {len(ids)} tokens; kept the last {room} so that it and {max_new_tokens} new tokens "
                f"fit the context of {block_size}",
                PromptTruncatedWarning,
                stacklevel=4,
            )
            ids = ids[-room:]
        fitted.append(ids)
    return fitted


@dataclass
class Sample:
    """One generated sequence. ``generated_ids`` include the token that ended it (end-of-text, or
    the one completing a stop string); ``text`` is the continuation without either."""

    prompt_ids: list[int]
    generated_ids: list[int]
    text: str
    finish_reason: str  # "length", "eos" or "stop"
    prompt_index: int = 0
    sample_index: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Continuation:
    """One sequence as its tokens arrive: the generated ids, the final text, and why it ended.

    ``decode`` keeps one per row; the server's continuous batcher keeps one per request row, so both
    stop (end-of-text, stop string, length) and stream the same text for the same tokens.
    """

    def __init__(self, max_new_tokens: int, stop: Sequence[str] = (), eos_token_id: int | None = EOT_ID) -> None:
        self.max_new_tokens = max_new_tokens
        self.eos_token_id = eos_token_id
        self.generated: list[int] = []  # includes the token that ended it (end-of-text or a stop string's last)
        self.reason: str | None = None  # "eos", "stop" or "length" once done
        self._text = TextStream(stop)

    @property
    def done(self) -> bool:
        return self.reason is not None

    @property
    def text(self) -> str:
        return self._text.text

    def push(self, token: int) -> str:
        """Add a sampled token; returns the text that became final (everything left once it ends)."""
        self.generated.append(token)
        piece = ""
        if token == self.eos_token_id:
            self.reason = "eos"
        else:
            piece = self._text.push(token)
            if self._text.stopped:
                self.reason = "stop"
        if self.reason is None and len(self.generated) >= self.max_new_tokens:
            self.reason = "length"
        if self.reason is not None:
            piece += self._text.finish()
        return piece


def sampling_vocab(vocab_size: int) -> int:
    """How many leading logits may be sampled: never an id the tokenizer cannot decode."""
    return min(vocab_size, get_tokenizer().n_vocab)


# -- the decode loop, for any engine ------------------------------------------------------------

NON_FINITE = ("the model computed NaN or inf logits: its weights hold NaN/inf values (a diverged training run?) "
              "or overflow in float16; use another checkpoint, or --dtype float32")


def decode(engine: Engine, prompt: Prompt | Sequence[Prompt], options: GenerationOptions | None = None, *,
           stream: StreamCallback | None = None, **fields: Any) -> list[Sample]:
    """``generate`` on any decoding ``Engine`` (torch or onnxruntime): encode, fit the context, sample,
    stop, stream. A finished sequence's row leaves the batch; the others go on.

    ``fields`` are ``GenerationOptions`` fields, replacing those of ``options``.
    """
    options = GenerationOptions.of(options, **fields)
    max_new_tokens, num_samples = options.max_new_tokens, options.num_samples
    prompts = fit_context(encode_prompts(prompt, engine.vocab_size), engine.block_size, max_new_tokens)
    n = len(prompts) * num_samples
    longest = max(len(p) for p in prompts) + max_new_tokens
    # Per row: its KV cache, and each step's logits with the sampler's float64 copies of them.
    row_bytes = longest * engine.cache_bytes_per_token + engine.vocab_size * (4 + 3 * 8)
    check_fits(n * row_bytes, f"decoding {n:,} sequence(s) of up to {longest} tokens",
               "lower --num-samples, the number of prompts or --max-new-tokens")
    sampler = Sampler(options, [j for _ in prompts for j in range(num_samples)], options.seed)
    sequences = [Continuation(max_new_tokens, options.stop, options.eos_token_id) for _ in range(n)]
    vocab = sampling_vocab(engine.vocab_size)

    logits = engine.add(prompts, [num_samples] * len(prompts))
    if not np.isfinite(logits).all():
        raise InputError(NON_FINITE)
    live = list(range(n))  # the sequence each of the engine's rows decodes
    while True:
        tokens = sampler(logits[:, :vocab], live)
        for i, token in zip(live, tokens, strict=True):
            piece = sequences[i].push(token)
            if piece and stream is not None:
                stream(i, piece)
        running = [j for j, i in enumerate(live) if not sequences[i].done]
        if not running:
            break
        if len(running) < len(live):
            engine.keep(running)
            live, tokens = [live[j] for j in running], [tokens[j] for j in running]
        logits = engine.step(tokens)

    return [
        Sample(prompts[i // num_samples], s.generated, s.text, s.reason or "length", i // num_samples, i % num_samples)
        for i, s in enumerate(sequences)
    ]


# -- decoding a GPT -----------------------------------------------------------------------------


def generate(model: GPT, prompt: Prompt | Sequence[Prompt], options: GenerationOptions | None = None, *,
             stream: StreamCallback | None = None, use_cache: bool = True, **fields: Any) -> list[Sample]:
    """Continue ``prompt`` (a string, token ids, or a list of either) with ``model``.

    ``options`` (a ``GenerationOptions``) or its fields as keyword arguments (``max_new_tokens=20,
    seed=0``; they replace those of ``options``) say how. Returns ``num_samples`` samples per prompt,
    prompt by prompt. Prompts of different lengths are decoded together with left padding.
    ``stream(index, text)`` is called with each piece of text as it becomes final, ``index`` being the
    sample's place in the returned list. A prompt too long for the context keeps its most recent tokens
    (``PromptTruncatedWarning``). The same seed gives the same text however prompts are batched.
    ``use_cache=False`` recomputes every sequence at every step: slow, the reference the cache is tested against.
    Decodes in eval mode (dropout off) and gives every module its own training flag back afterwards:
    the caller's model is left as it was. Tuning for this machine is the caller's call
    (``gpt2reg.accel.tune(model)``, which ``gpt2reg generate`` makes).
    """
    from .torch_backend import torch_engine

    options = GenerationOptions.of(options, **fields)
    training = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        return decode(torch_engine(model, use_cache), prompt, options, stream=stream)
    finally:
        for module, flag in training:
            module.training = flag


def __getattr__(name: str) -> Any:
    if name == "SamplingOptions":  # the sampler's options before GenerationOptions held every option
        warnings.warn("gpt2reg.generation.SamplingOptions is now GenerationOptions; use that name",
                      DeprecationWarning, stacklevel=2)
        return GenerationOptions
    raise AttributeError(f"module '{__name__}' has no attribute '{name}'")


__all__ = [
    "Continuation",
    "GenerationOptions",
    "decode",
    "draw",
    "PromptTruncatedWarning",
    "Sample",
    "Sampler",
    "TextStream",
    "encode_prompts",
    "filter_logits",
    "fit_context",
    "generate",
    "probabilities",
    "sampling_vocab",
    "weights",
]
