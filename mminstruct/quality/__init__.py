"""Quality of generated data: the report (``report``: duplicates, in-context copies, invalid
samples, refusals, grounding; ``text``, ``grounding``, ``minhash``: near-duplicates across images)
and the VLM judge (``judge`` on the generation engine, ``rubric``, ``scores``).
"""

from mminstruct.lazy import public

__all__, __getattr__ = public(__name__, {
    "QualityConfig": "report",
    "analyse": "report",
    "write_report": "report",
    "FLAGS": "report",
    "cross_image_duplicates": "minhash",
    "JudgeConfig": "judge",
    "judge_widget": "judge",
    "run_judge": "judge",
    "load_rubric": "rubric",
    "Rubric": "rubric",
    "read_scores": "scores",
})
