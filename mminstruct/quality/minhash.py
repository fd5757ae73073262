"""Near-duplicates across images: the same generic question and answer written for many images.

MinHash LSH with ``datasketch``: each sample's question + answer is a set of word bigrams
(shingles); its signature is datasketch's MinHash of that set (the ``legacy`` scheme: SHA-1 32-bit
hashes, affine permutations mod 2^61 − 1, ``num_perm`` of them, ``seed``) and the bands are the
ones ``datasketch.MinHashLSH`` chooses for the threshold. What is batched here is only the
arithmetic: each distinct shingle is hashed and permuted once (the permutations are read from a
``datasketch.MinHash``), a sample's signature is the element-wise minimum over its shingles
(``np.minimum.reduceat``, what ``MinHash.merge`` computes), and bands are grouped with numpy sorts
instead of 600,000 ``MinHashLSH.insert`` calls (datasketch's per-object API takes ~6 minutes for
600,000 samples on 2 cores; this takes seconds — see ``bench/quality_speed.py``).

Samples sharing a band bucket are compared with the bucket's earliest member by their estimated
Jaccard similarity (the fraction of equal signature values); pairs ≥ ``threshold`` are joined, and
in each group spanning two or more images every sample but the earliest is flagged ``cross_image_duplicate`` (with the earliest as ``duplicate_of``).
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence

CROSS_IMAGE_THRESHOLD = 0.8
NUM_PERM = 64
SEED = 1
_SEP = "\x1f"


class ShingleSets:
    """Word-bigram sets of many texts, kept as one flat array of shingle ids (4 bytes each)."""

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}
        self.ids = array("I")
        self.offsets = array("q", [0])

    def add(self, words: Sequence[str]) -> None:
        """One text's shingles: its word bigrams (its only word when it has one)."""
        vocab, ids = self.vocab, self.ids
        grams = {f"{a}{_SEP}{b}" for a, b in zip(words, words[1:])} if len(words) > 1 \
            else set(words)
        for g in grams:
            k = vocab.get(g)
            if k is None:
                k = vocab[g] = len(vocab)
            ids.append(k)
        self.offsets.append(len(ids))

    def __len__(self) -> int:
        return len(self.offsets) - 1


def permutations(num_perm: int = NUM_PERM, seed: int = SEED):
    """datasketch's (a, b) permutation parameters for ``num_perm`` and ``seed`` (legacy scheme)."""
    from datasketch import MinHash

    a, b = MinHash(num_perm=num_perm, seed=seed, scheme="legacy").permutations
    return a, b


def signatures(sets: ShingleSets, num_perm: int = NUM_PERM, seed: int = SEED):
    """[n, num_perm] uint32: datasketch's MinHash (legacy scheme) of every set; an empty set's row
    is all 0xFFFFFFFF (datasketch's empty MinHash)."""
    import numpy as np
    from datasketch.hashfunc import sha1_hash32

    prime, max_hash = np.uint64((1 << 61) - 1), np.uint64((1 << 32) - 1)
    a, b = permutations(num_perm, seed)
    vocab = sorted(sets.vocab, key=sets.vocab.__getitem__)
    hv = np.fromiter((sha1_hash32(g.encode()) for g in vocab), dtype=np.uint64, count=len(vocab))
    ids = np.frombuffer(sets.ids, dtype=np.uint32) if len(sets.ids) else np.zeros(0, np.uint32)
    off = np.frombuffer(sets.offsets, dtype=np.int64)
    n = len(sets)
    sig = np.full((n, num_perm), 0xFFFFFFFF, dtype=np.uint32)
    nonempty = np.flatnonzero(off[1:] > off[:-1])
    if not len(ids):
        return sig
    starts = off[:-1][nonempty]
    with np.errstate(over="ignore"):
        for k in range(num_perm):  # one permutation at a time: memory stays at one column
            phv = ((a[k] * hv + b[k]) % prime & max_hash).astype(np.uint32)
            sig[nonempty, k] = np.minimum.reduceat(phv[ids], starts)
    return sig


def lsh_params(threshold: float, num_perm: int = NUM_PERM) -> tuple[int, int]:
    """(bands, rows) as ``datasketch.MinHashLSH`` picks them for ``threshold``."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    return lsh.b, lsh.r


def cross_image_duplicates(sets: ShingleSets, images: Sequence[int],
                           threshold: float = CROSS_IMAGE_THRESHOLD, num_perm: int = NUM_PERM,
                           seed: int = SEED) -> dict[int, int]:
    """sample index → the earliest sample of its group (for every flagged sample). ``images[i]``
    is an id of sample i's image (< 0: no image, never compared)."""
    import numpy as np

    n = len(sets)
    if n < 2:
        return {}
    sig = signatures(sets, num_perm, seed)
    img = np.asarray(images, dtype=np.int64)
    off = np.frombuffer(sets.offsets, dtype=np.int64)
    usable = (off[1:] > off[:-1]) & (img >= 0)
    bands, rows = lsh_params(threshold, num_perm)
    rng = np.random.default_rng(seed)
    firsts, members = [], []
    idx = np.flatnonzero(usable)
    for band in range(bands):
        block = sig[idx, band * rows:(band + 1) * rows].astype(np.uint64)
        mult = rng.integers(1, 1 << 63, size=rows, dtype=np.uint64) | np.uint64(1)
        with np.errstate(over="ignore"):
            key = (block * mult).sum(axis=1, dtype=np.uint64)
        order = np.argsort(key, kind="stable")  # stable: file order within a bucket
        k_sorted = key[order]
        start = np.r_[True, k_sorted[1:] != k_sorted[:-1]]
        group_first = np.maximum.accumulate(np.where(start, np.arange(len(order)), 0))
        m = ~start
        firsts.append(idx[order[group_first[m]]])
        members.append(idx[order[m]])
    if not firsts:
        return {}
    f = np.concatenate(firsts)
    m = np.concatenate(members)
    if not len(f):
        return {}
    pair = np.unique(f.astype(np.int64) * n + m)
    f, m = pair // n, pair % n
    est = np.empty(len(f))
    for s in range(0, len(f), 200_000):
        est[s:s + 200_000] = (sig[f[s:s + 200_000]] == sig[m[s:s + 200_000]]).mean(axis=1)
    ok = est >= threshold
    f, m = f[ok], m[ok]
    if not len(f):
        return {}
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(f), dtype=np.int8), (f, m)), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    involved = np.unique(np.concatenate([f, m]))
    out: dict[int, int] = {}
    groups: dict[int, list[int]] = {}
    for i in involved.tolist():
        groups.setdefault(int(label[i]), []).append(i)
    for members_ in groups.values():
        if len({int(img[i]) for i in members_}) < 2:
            continue
        first = min(members_)
        for i in members_:
            if i != first:
                out[i] = first
    return out


__all__ = ["CROSS_IMAGE_THRESHOLD", "ShingleSets", "cross_image_duplicates", "lsh_params",
           "permutations", "signatures"]
