"""``sequence``: a synthetic token-sequence task that needs attention (the ACClip attention study).

Each example is a sequence of ``LENGTH`` = 16 token ids from a vocabulary of ``VOCAB`` = 32, drawn
i.i.d. from a Zipf law (P(token k) proportional to 1 / (k + 1), so token 0 is ~25% of all tokens and
token 31 under 1%: the imbalance of natural-language vocabularies). The label asks whether the
FIRST token occurs again later in the sequence (1) or not (0): answering needs a content-based
comparison between position 0 and every other position, which self-attention does directly (query
of position 0 against keys of the same token) and a bag-of-tokens model cannot do.

The labels are balanced by construction: half of the examples (a random half) are made positive by
writing the first token at one random later position if it does not occur there already; in the
other half, every later occurrence of the first token is redrawn from the Zipf law conditioned on
being a different token. So the label is independent of the first token itself. Generated from a
fixed seed (same tensors on every call); ``x`` holds the ids as ``float32 Tensor[N, 16]`` (the
``Dataset`` convention), ``y`` the labels, 20,000 training and 5,000 test examples.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import DATASETS, Dataset

VOCAB = 32
LENGTH = 16
N_TRAIN, N_TEST = 20_000, 5_000
ZIPF_EXPONENT = 1.0
SEED = 20_200_910


def zipf_probs(vocab: int = VOCAB, exponent: float = ZIPF_EXPONENT) -> Tensor:
    p = 1.0 / torch.arange(1, vocab + 1, dtype=torch.float64) ** exponent
    return p / p.sum()


def make_sequences(n: int, gen: torch.Generator, vocab: int = VOCAB, length: int = LENGTH) -> tuple[Tensor, Tensor]:
    """``n`` examples: int64 ids ``[n, length]`` and balanced labels ``[n]`` ("does token 0 reappear?")."""
    p = zipf_probs(vocab)
    ids = torch.multinomial(p, n * length, replacement=True, generator=gen).view(n, length)
    y = torch.zeros(n, dtype=torch.long)
    y[torch.randperm(n, generator=gen)[: n // 2]] = 1
    first = ids[:, :1]
    # positives: make sure the first token occurs again (at one random later position if it did not)
    missing = (y == 1) & ~(ids[:, 1:] == first).any(1)
    pos = torch.randint(1, length, (n,), generator=gen)
    rows = missing.nonzero().squeeze(1)
    ids[rows, pos[rows]] = first[rows, 0]
    # negatives: redraw every later copy of the first token until none is left (Zipf conditioned on != first)
    while True:
        clash = (y == 1).logical_not().unsqueeze(1) & (ids[:, 1:] == first)
        if not clash.any():
            break
        r, c = clash.nonzero(as_tuple=True)
        ids[r, c + 1] = torch.multinomial(p, r.numel(), replacement=True, generator=gen)
    return ids, y


@DATASETS.register("sequence")
def sequence(data_dir: str | None = None, download: bool = True) -> Dataset:
    """Synthetic Zipf-token sequences (length 16, vocabulary 32): does the first token occur again? 2 balanced classes."""
    del data_dir, download  # generated, nothing to read or fetch
    gen = torch.Generator().manual_seed(SEED)
    x_train, y_train = make_sequences(N_TRAIN, gen)
    x_test, y_test = make_sequences(N_TEST, gen)
    return Dataset("sequence", x_train.float(), y_train, x_test.float(), y_test, num_classes=2)
