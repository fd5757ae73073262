"""Near-duplicates across images (``--cross_image``): MinHash LSH over question + answer."""

from __future__ import annotations

import json
import random

import numpy as np
from datasketch import MinHash

from mminstruct.quality.report import CROSS_IMAGE_FLAG, QualityConfig, analyse, main
from mminstruct.quality.minhash import ShingleSets, cross_image_duplicates, signatures
from tests.test_quality import _sample, _write

GENERIC_Q = "What can you see in this picture?"
GENERIC_A = "The image shows a scene with several objects and some people in the background."


def test_signatures_are_datasketch_minhashes() -> None:
    rng = random.Random(3)
    vocab = [f"w{i}" for i in range(500)]
    docs = [rng.sample(vocab, rng.randint(1, 30)) for _ in range(40)] + [[]]
    sets = ShingleSets()
    for d in docs:
        sets.add(d)
    sig = signatures(sets)
    for d, row in zip(docs, sig):
        m = MinHash(num_perm=sig.shape[1], seed=1, scheme="legacy")
        grams = {f"{a}\x1f{b}" for a, b in zip(d, d[1:])} if len(d) > 1 else set(d)
        for g in grams:
            m.update(g.encode())
        assert np.array_equal(m.hashvalues.astype(np.uint32), row)


def test_the_same_generic_sample_on_many_images_is_flagged_after_the_first(tmp_path) -> None:
    rng = random.Random(0)
    objects = ["dog", "cat", "bus", "tree", "clock", "boat", "kite", "horse", "chair", "cup"]
    samples = []
    pairs = rng.sample([(a, b) for a in objects for b in objects if a != b], 60)
    for i, (o1, o2) in enumerate(pairs):  # 60 samples on 20 images: one template, other content
        o3 = rng.choice([o for o in objects if o not in (o1, o2)])
        samples.append(_sample(len(samples), f"Where is the {o1} relative to the {o2}?",
                               f"The {o1} stands to the left of the {o2}, near a {o3}.",
                               image=f"img{i % 20}.jpg"))
    generic = []
    for k in range(6):  # the generic sample written for six images (case and spacing vary)
        generic.append(len(samples))
        q = GENERIC_Q if k % 2 else GENERIC_Q.upper()
        samples.insert(len(samples), _sample(len(samples), q, GENERIC_A + ("  " * k),
                                             image=f"gen{k}.jpg"))
    same_image = len(samples)  # repeated on its own image only: a within-image duplicate
    samples.append(_sample(same_image, "How many clocks hang on the wall?", "Three clocks.",
                           image="solo.jpg"))
    samples.append(_sample(same_image + 1, "How many clocks hang on the wall?", "Three clocks.",
                           image="solo.jpg"))
    f = _write(tmp_path / "g.json", samples)
    rep = analyse(QualityConfig(str(f), cross_image=True))
    flagged = [e["id"] for e in rep.samples if CROSS_IMAGE_FLAG in e["flags"]]
    assert flagged == generic[1:]
    assert all(rep.samples[i]["duplicate_of"] == generic[0] for i in generic[1:])
    assert rep.summary["flags"][CROSS_IMAGE_FLAG] == 5
    assert "exact_duplicate" in rep.samples[same_image + 1]["flags"]
    # off by default: the report's flags are the usual ones
    assert CROSS_IMAGE_FLAG not in analyse(QualityConfig(str(f))).summary["flags"]


def test_no_image_and_same_image_pairs_are_never_cross_image() -> None:
    sets = ShingleSets()
    for _ in range(4):
        sets.add("the same words in every one of these texts".split())
    assert cross_image_duplicates(sets, [0, 0, -1, -1]) == {}
    assert cross_image_duplicates(sets, [0, 1, -1, 0]) == {1: 0, 3: 0}


def test_the_command_line_flag(tmp_path, capsys) -> None:
    f = _write(tmp_path / "g.json", [_sample(i, GENERIC_Q, GENERIC_A, image=f"{i}.jpg")
                                     for i in range(3)])
    out = tmp_path / "r.json"
    assert main(["--generated_file", str(f), "--output", str(out), "--cross_image"]) == 0
    assert "cross_image_duplicate 2" in capsys.readouterr().err
    rep = json.loads(out.read_text())
    assert rep["summary"]["thresholds"]["cross_image_duplicate"] == 0.8
    assert [e["flags"] for e in rep["samples"]] == [[], [CROSS_IMAGE_FLAG], [CROSS_IMAGE_FLAG]]
