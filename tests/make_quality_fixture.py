"""Build the planted-defect set for the quality report (``tests/data/quality/``).

    python tests/make_quality_fixture.py [--source LLAVA_JSON] [--out tests/data/quality]

Deterministic (seeded). Question/answer text comes from the LLaVA-Instruct excerpt shipped with
LLaMA-Factory (``../shared/fixtures/real/hiyouga__LLaMA-Factory/data/llava_instruct_100.json``:
the repository is Apache-2.0, the LLaVA-Instruct data CC BY-NC 4.0, used here as a test fixture)
plus text written for this fixture (refusals, multiple-choice items, rewordings). No MM-Gen text.

Layout: a vqa-mode generated file (``generated.json``, two samples per item: reasoning and
concise) with its prompt file (``prompts.json``: two in-context examples per prompt, from 30
reference images) and ``truth.json``: the planted flags of each sample by index. Planted:

* exact duplicates: a clean item repeated on its image with case, spacing and punctuation changed;
* near duplicates: a clean item's question reworded on the same image (filler added or dropped,
  a lead-in, a stop word changed, one word added to a question of 4+ content words) with a new
  answer;
* icl copies: an in-context example's question of the item's own prompt, verbatim or reworded;
* invalid: empty question, empty answer, a multiple-choice answer that is not an option, and shape
  breaks (no image, three turns, a missing question suffix, turns swapped);
* refusals: a clean item's answer replaced by one of many written refusals.

``make_judge_set(root)`` builds, at test time, the judge's planted set from these files: clean
samples with their images drawn in colours that carry an id, plus answers moved to another image,
answers naming an object in no image, and questions of another task.

Hard negatives (never flagged): LLaVA's own follow-up questions on the same image (same topic);
a clean question copied to another image; an in-context example's question asked in a prompt that
does not show it; valid multiple-choice answers in several styles; answers that say "sorry" or
"cannot" about what is in the picture.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = (HERE.parent.parent / "shared" / "fixtures" / "real" / "hiyouga__LLaMA-Factory"
                  / "data" / "llava_instruct_100.json")
DEFAULT_OUT = HERE / "data" / "quality"
SEED = 10
REASONING_SUFFIX = "Think step by step and explain your reasoning, then give the answer."
CONCISE_SUFFIX = "Answer concisely."
ORDINALS = ("first", "second", "third")

REFUSALS = [
    "I'm sorry, but I can't see the image you are referring to.",
    "I am sorry, I cannot view images.",
    "I apologize, but I am unable to see the image.",
    "As an AI language model, I cannot see images, so I can't answer this question.",
    "Sorry, I can't help with that. I'm unable to view the picture.",
    "I'm unable to view the image you provided, so I cannot answer.",
    "Unfortunately, I cannot see the picture, so I am unable to determine the answer.",
    "My apologies, but no image was provided with your question.",
    "I'm not able to see images. Could you describe it for me?",
    "I cannot determine that because the image is not visible to me.",
    "I apologise, but I cannot provide an answer without seeing the photo.",
    "Please provide the image so that I can answer the question.",
    "I'm really sorry, but I cannot assist with this request.",
    "I don't have access to the image, so I cannot tell what is shown.",
]
NOT_REFUSALS = [  # answers a careless matcher would take for refusals
    "The sign on the door reads \"Sorry, we're closed\", so the shop is not open.",
    "The man cannot see the ball because it is behind him.",
    "The dog seems sorry for knocking over the vase, with its ears pulled back.",
    "It is hard to say exactly, but the clock appears to show about ten past two.",
    "The child is unable to reach the shelf, so she stands on a chair.",
    "No, there is no image of a cat on the poster; it shows a mountain.",
]
MC_ITEMS = [  # (question, options, correct letter), written for this fixture
    ("What is the main color of the largest object?", ["red", "white", "blue", "green"], "B"),
    ("Where was this picture most likely taken?", ["indoors", "on a street", "at sea", "in a forest"], "B"),
    ("How many people are clearly visible?", ["none", "one", "two", "more than two"], "D"),
    ("What time of day does it appear to be?", ["morning", "midday", "evening", "night"], "B"),
    ("Which animal appears in the scene?", ["dog", "cat", "horse", "bird"], "A"),
    ("What is the weather like?", ["sunny", "rainy", "snowy", "foggy"], "A"),
    ("What kind of vehicle is shown?", ["bicycle", "truck", "boat", "airplane"], "B"),
    ("What is the person on the left holding?", ["a phone", "an umbrella", "a cup", "nothing"], "C"),
    ("What surface are the objects resting on?", ["a table", "the floor", "grass", "sand"], "A"),
    ("Which season does the scene suggest?", ["spring", "summer", "autumn", "winter"], "D"),
]


def _sentence(text: str) -> str:
    m = re.match(r"(.+?[.!?])(\s|$)", text.strip(), re.DOTALL)
    return (m.group(1) if m else text.strip())[:200]


def _pairs(rec: dict) -> list[tuple[str, str]]:
    conv = rec["conversations"]
    out = []
    for h, g in zip(conv[::2], conv[1::2]):
        q = re.sub(r"<image>\s*", "", h["value"]).strip()
        out.append((q, g["value"].strip()))
    return out


def _item(q: str, a: str, r: str | None = None) -> dict:
    return {"Q": q, "R": (r if r is not None else a)[:400], "A": _sentence(a)}


FILLERS = [
    lambda q: q.rstrip("?") + " in the image?",
    lambda q: q.rstrip("?") + " in this picture?",
    lambda q: "Can you tell me " + q[0].lower() + q[1:],
    lambda q: "In the image, " + q[0].lower() + q[1:],
    lambda q: q.replace(" the ", " this ", 1) if " the " in q else q.rstrip("?") + " here?",
]
_FUNCTION_WORDS = set("""a an the this that is are was were be do does did of in on at to for with
and or what which who where when why how there it its any image picture photo can you me""".split())
ADJECTIVES = ["large", "small", "old", "visible", "main"]


def near_variant(q: str, rng: random.Random) -> str:
    """A rewording that keeps the question: filler or a lead-in, a stop word, or one added word."""
    content = [w for w in re.findall(r"\w+", q.lower()) if w not in _FUNCTION_WORDS]
    if len(content) >= 4 and rng.random() < 0.35:
        words = q.split(" ")
        for k, w in enumerate(words):  # add an adjective before the last noun-ish word after "the"
            if w.lower() == "the" and k + 1 < len(words) - 1:
                return " ".join(words[:k + 1] + [rng.choice(ADJECTIVES)] + words[k + 1:])
    for _ in range(10):
        out = rng.choice(FILLERS)(q)
        if out != q:
            return out
    return q.rstrip("?") + " in the image?"


def exact_variant(text: str, rng: random.Random) -> str:
    """The same text with case, spacing and punctuation changed."""
    t = text.upper() if rng.random() < 0.3 else text.lower()
    t = t.replace(" ", "  ", 1)
    return t.rstrip(".?!") + rng.choice(["", " .", "!!", " ?"])


def build(source: Path) -> tuple[dict, dict, dict]:
    rng = random.Random(SEED)
    records = json.loads(source.read_text(encoding="utf-8"))
    records = sorted(records, key=lambda r: r["id"])
    rng.shuffle(records)
    refs, cands = records[:30], records[30:]
    ref_pairs = {i: _pairs(r) for i, r in enumerate(refs)}

    prompts: list[dict] = []
    samples: list[dict] = []
    truth: list[list[str]] = []

    def icl_part(q: str, a: str, k: int) -> str:
        return f"Q: Refer to the {ORDINALS[k - 1]} image. {q}\n A: {a}"

    def new_prompt(keyword: str, image: str, own: list[str]) -> int:
        while True:  # a prompt whose examples ask the candidate's own questions is a real copy
            icl = rng.sample(range(len(refs)), 2)
            if not any(_similar(ref_pairs[i][0][0], q) for i in icl for q in own):
                break
        parts: list[str] = []
        for k, idx in enumerate(icl, start=1):
            q, a = ref_pairs[idx][0]
            parts += [f"Example {k}", f"reference/{refs[idx]['image']}", icl_part(q, a, k)]
        parts.append(image)
        prompts.append({"keyword": keyword, "prompt": parts, "icl_indices": icl})
        return len(prompts) - 1

    def add(item: dict, image: str | None, keyword: str, prompt_idx: int, flags: list[str],
            *, shape: str | None = None) -> None:
        """Both samples of a vqa item; ``shape`` breaks one thing in both."""
        tag = "<image>\n" if image else ""
        stem = item["Q"] + (f"\n{item['choices']}" if item.get("choices") else "")
        for variant, suffix, answer in (("reasoning", REASONING_SUFFIX, f"{item['R']}\n{item['A']}"),
                                        ("concise", CONCISE_SUFFIX, item["A"])):
            human = f"{tag}{stem}\n{suffix}" if stem else f"{tag}{suffix}"
            if item.get("empty_answer"):
                answer = ""
            s: dict = {"id": len(samples)}
            if image and shape != "no_image":
                s["image_1"] = image
            conv = [{"from": "human", "value": human}, {"from": "gpt", "value": answer}]
            if shape == "no_suffix":
                conv[0]["value"] = f"{tag}{stem}"
            elif shape == "three_turns":
                conv.append({"from": "human", "value": "And why?"})
            elif shape == "swapped":
                conv = [{"from": "gpt", "value": answer}, {"from": "human", "value": human}]
            s.update(conversations=conv, icl_indices=prompts[prompt_idx]["icl_indices"],
                     keyword=keyword, prompt_idx=prompt_idx, variant=variant)
            samples.append(s)
            truth.append(sorted(flags))

    keywords = ["street scene", "indoor scene", "animals", "vehicles", "people"]
    clean_items: list[tuple[int, dict, str, str]] = []  # (prompt, item, image, keyword)
    duplicated: set[str] = set()  # images with a planted exact duplicate: answers stay as they are
    for n, rec in enumerate(cands):
        image, keyword = f"candidates/{rec['image']}", keywords[n % len(keywords)]
        pairs = _pairs(rec)
        p = new_prompt(keyword, image, [q for q, _ in pairs])
        for q, a in pairs:
            item = _item(q, a)
            add(item, image, keyword, p, [])
            clean_items.append((p, item, image, keyword))
        # defects and hard negatives on this image, decided by the seeded stream
        roll = rng.random()
        if roll < 0.45:  # exact duplicate of one of this image's items
            q, a = rng.choice(pairs)
            item = _item(q, a)
            dup = {"Q": exact_variant(item["Q"], rng), "R": exact_variant(item["R"], rng),
                   "A": exact_variant(item["A"], rng)}
            add(dup, image, keyword, p, ["exact_duplicate"])
            duplicated.add(image)
        if 0.25 < roll < 0.8:  # near duplicate: reworded question, new answer
            q, a = rng.choice(pairs)
            add(_item(near_variant(q, rng), _sentence(a) + " That is what can be seen."),
                image, keyword, p, ["near_duplicate"])
        if roll > 0.55:  # in-context copy: an example question of this prompt
            k = rng.randrange(2)
            q, a = ref_pairs[prompts[p]["icl_indices"][k]][0]
            q2 = q if rng.random() < 0.6 else near_variant(q, rng)
            add(_item(q2, "Based on what is visible, " + a[0].lower() + a[1:]), image, keyword, p,
                ["icl_copy"])
        if n % 3 == 0:  # hard negative: another image's first question on this image
            other = cands[(n + 7) % len(cands)]
            q, _ = _pairs(other)[0]
            shown_qs = [ref_pairs[i][0][0] for i in prompts[p]["icl_indices"]]
            if not any(_similar(q, x) for x in [x for x, _ in pairs] + shown_qs):
                add(_item(q, "Looking closely, the answer differs for this picture: "
                          + _sentence(pairs[0][1]).lower()), image, keyword, p, [])
        if n % 4 == 1:  # hard negative: an example question this prompt does not show
            shown = set(prompts[p]["icl_indices"])
            idx = next(i for i in rng.sample(range(len(refs)), len(refs)) if i not in shown)
            q, a = ref_pairs[idx][0]
            if not any(_similar(q, x) for x, _ in pairs):
                add(_item(q, "Here it is different: " + _sentence(pairs[-1][1]).lower()),
                    image, keyword, p, [])

    # multiple choice: valid answers in many styles (clean) and answers that are no option
    n_plain = len(samples)
    styles = [lambda L, t: L, lambda L, t: f"({L})", lambda L, t: f"{L}. {t}",
              lambda L, t: f"The answer is {L}.", lambda L, t: t, lambda L, t: f"{L}) {t}"]
    by_image = {image: (p, image, keyword) for p, _, image, keyword in clean_items}
    mc_hosts = rng.sample(sorted(by_image), 40)
    for n in range(40):  # one multiple-choice item per image: two on one image would be duplicates
        p, image, keyword = by_image[mc_hosts[n]]
        q, opts, right = MC_ITEMS[n % len(MC_ITEMS)]
        letters = "ABCD"
        choices = "\n".join(f"{L}. {t}" for L, t in zip(letters, opts))
        if n % 3 == 2:
            wrong = rng.choice(["E", "F", "purple", "a giraffe", "All of them."])
            add({"Q": q, "choices": choices, "R": "The options do not fit what I see.", "A": wrong},
                image, keyword, p, ["invalid"])
        else:
            L = right if rng.random() < 0.5 else rng.choice(letters)
            t = opts[letters.index(L)]
            add({"Q": q, "choices": choices, "R": f"Looking at the picture, it is {t}.",
                 "A": styles[n % len(styles)](L, t)}, image, keyword, p, [])

    # invalid: empty question / answer and shape breaks, on clean items' prompts
    kinds = ["empty_q", "empty_a", "no_image", "three_turns", "no_suffix", "swapped"]
    other_qs = sorted({q for r in cands for q, _ in _pairs(r)})
    rng.shuffle(other_qs)
    for n in range(30):
        p, item, image, keyword = clean_items[rng.randrange(len(clean_items))]
        kind = kinds[n % len(kinds)]
        other_q = other_qs[n]  # another image's question, each used once
        new = {"Q": "" if kind == "empty_q" else other_q + " Explain briefly.",
               "R": item["R"], "A": item["A"], "empty_answer": kind == "empty_a"}
        add(new, image, keyword, p, ["invalid"],
            shape=kind if kind in ("no_image", "three_turns", "no_suffix", "swapped") else None)

    # refusals replace a clean item's answer; answers that only sound like refusals stay clean
    clean_idx = [i for i, t in enumerate(truth[:n_plain]) if not t
                 and samples[i]["variant"] == "concise" and samples[i]["image_1"] not in duplicated]
    picked = rng.sample(clean_idx, 36)
    for n, i in enumerate(picked):
        if n < 28:
            text = REFUSALS[n % len(REFUSALS)]
            samples[i]["conversations"][1]["value"] = text
            reasoning = samples[i - 1]
            reasoning["conversations"][1]["value"] = f"{text}\n{text}"
            truth[i], truth[i - 1] = ["refusal"], ["refusal"]
        else:
            text = NOT_REFUSALS[n % len(NOT_REFUSALS)]
            samples[i]["conversations"][1]["value"] = text
            samples[i - 1]["conversations"][1]["value"] = f"Looking at it. {text}\n{text}"

    header = {"image_folder": "", "len_samples": len(samples), "start_idx": 0,
              "end_idx": len(prompts), "num_prompts": len(prompts), "mode": "vqa",
              "model": "planted-defects", "input_folder": "", "dataset_description":
              "everyday photographs", "prompt_file": "prompts.json"}
    generated = {**header, "samples": samples}
    prompt_file = {"task_desc_path": "task.json", "dataset_description": "everyday photographs",
                   "num_icl_samples": 2, "mode": "vqa", "min_gen_per_candidate": 1,
                   "total_gen": len(prompts), "seed": SEED, "num_prompts": len(prompts),
                   "prompts": prompts}
    return generated, prompt_file, {"seed": SEED, "source": "llava_instruct_100.json "
                                    "(LLaMA-Factory, CC BY-NC 4.0 data) + text written for the "
                                    "fixture", "flags": truth}


def _norm(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def _content(text: str) -> set[str]:
    return {w.rstrip("s") for w in re.findall(r"\w+", text.lower()) if w not in _FUNCTION_WORDS}


def _similar(a: str, b: str) -> bool:
    """Loosely the same question (this fixture's own check, kept apart from the code under test):
    a hard negative must not be one, or it would be a real duplicate."""
    x, y = _content(a), _content(b)
    return len(x & y) >= 0.5 * max(1, len(x | y))


def write(out: Path, generated: dict, prompt_file: dict, truth: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    head = {k: v for k, v in generated.items() if k != "samples"}
    lines = ["{"] + [f"{json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}," for k, v in head.items()]
    lines.append('"samples": [')
    lines.append(",\n".join(json.dumps(s, ensure_ascii=False) for s in generated["samples"]))
    lines.append("]\n}\n")
    (out / "generated.json").write_text("\n".join(lines), encoding="utf-8")
    (out / "prompts.json").write_text(json.dumps(prompt_file, ensure_ascii=False, indent=0) + "\n",
                                      encoding="utf-8")
    (out / "truth.json").write_text(json.dumps(truth, ensure_ascii=False) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------------------------
# The judge's planted set (built at test time from the committed generated.json; no shared data)

ABSENT_OBJECTS = ("giraffe", "submarine", "volcano")
OFF_TASK_QUESTIONS = (
    "Translate this sentence into French: 'The weather is nice today.'",
    "Write a Python function that reverses a string.",
    "What is the capital of Australia?",
)


def id_colour(k: int) -> tuple[int, int, int]:
    """A solid colour that carries the image id ``k`` (< 256) through downscaling and JPEG:
    what the judge server (``tests.openai_server.image_id``) reads back."""
    return (16 * (k % 16) + 8, 16 * (k // 16) + 8, 128)


@dataclass
class JudgeSet:
    input_folder: Path
    generated: Path
    prompts: Path
    truth: Path  # JSON list of the planted samples' ids
    bad: set[int]  # their ids
    kinds: dict[int, str]  # id -> moved_answer | absent_object | wrong_task
    rule: dict  # the judge server's rule (StubConfig.judge)
    n: int  # samples in the file


def make_judge_set(root: Path, n_clean: int = 60, per_kind: int = 5, seed: int = SEED) -> JudgeSet:
    """A vqa generated file of ``n_clean`` clean samples of the quality fixture (their images
    drawn in id colours) plus planted bad ones: answers moved to another image, answers that
    name an object in no image, questions of another task. Returns the judge server's rule."""
    from PIL import Image

    gen = json.loads((DEFAULT_OUT / "generated.json").read_text(encoding="utf-8"))
    flags = json.loads((DEFAULT_OUT / "truth.json").read_text(encoding="utf-8"))["flags"]
    clean = [s for s, f in zip(gen["samples"], flags) if not f and s.get("image_1")][:n_clean]
    images = sorted({s["image_1"] for s in clean})
    ident = {img: str(k) for k, img in enumerate(images)}
    input_folder = root / "input"
    for img in images:
        path = input_folder / img
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 48), id_colour(int(ident[img]))).save(path, quality=95)
    answers: dict[str, list[str]] = {}
    for s in clean:
        answers.setdefault(ident[s["image_1"]], []).append(s["conversations"][1]["value"].strip())
    rng = random.Random(seed)
    samples = [dict(s) for s in clean]
    next_id = max(s["id"] for s in samples) + 1
    kinds: dict[int, str] = {}

    def plant(base: dict, kind: str, **changes: object) -> None:
        nonlocal next_id
        s = json.loads(json.dumps(base))
        s.update(changes)
        s["id"] = next_id
        kinds[next_id] = kind
        next_id += 1
        samples.insert(rng.randrange(len(samples) + 1), s)

    for k in range(per_kind):
        a, b = rng.sample(clean, 2)
        while a["image_1"] == b["image_1"] or a["conversations"][1]["value"].strip() in \
                answers[ident[b["image_1"]]]:
            a, b = rng.sample(clean, 2)
        plant(a, "moved_answer", image_1=b["image_1"])
        c = rng.choice(clean)
        conv = json.loads(json.dumps(c["conversations"]))
        conv[1]["value"] = conv[1]["value"].rstrip() + \
            f" A {ABSENT_OBJECTS[k % len(ABSENT_OBJECTS)]} can also be seen in the background."
        plant(c, "absent_object", conversations=conv)
        d = rng.choice(clean)
        q = OFF_TASK_QUESTIONS[k % len(OFF_TASK_QUESTIONS)]
        plant(d, "wrong_task", conversations=[
            {"from": "human", "value": f"<image>\n{q}"},
            {"from": "gpt", "value": "Here is the answer to that request."}], variant=None)
    head = {k: v for k, v in gen.items() if k != "samples"}
    head.update(input_folder=str(input_folder), len_samples=len(samples),
                prompt_file="prompts.json", model="planted-judge")
    root.mkdir(parents=True, exist_ok=True)
    generated = root / "generated.json"
    generated.write_text(json.dumps({**head, "samples": samples}, ensure_ascii=False),
                         encoding="utf-8")
    prompts = root / "prompts.json"
    prompts.write_text((DEFAULT_OUT / "prompts.json").read_text(encoding="utf-8"),
                       encoding="utf-8")
    truth = root / "judge_truth.json"
    truth.write_text(json.dumps(sorted(kinds)))
    rule = {"answers": answers, "absent": list(ABSENT_OBJECTS), "off_task": list(OFF_TASK_QUESTIONS)}
    return JudgeSet(input_folder, generated, prompts, truth, set(kinds), kinds, rule,
                    len(samples))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    if not args.source.is_file():
        print(f"error: {args.source}: LLaVA excerpt not found", file=sys.stderr)
        return 2
    write(args.out, *build(args.source))
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
