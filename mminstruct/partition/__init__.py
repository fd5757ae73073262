"""Partitioning: keywords → subgroups (``assign``: zero-shot assignment, the top-K rule), the task
file (``taskfile``: a data file + a candidate pool + keywords), candidate retrieval over large
pools (``retrieval``: faiss).
"""

from mminstruct.lazy import public

__all__, __getattr__ = public(__name__, {
    "assign_keywords": "assign",
    "PARTITION_SETTINGS": "taskfile",
    "TASK_SETTINGS": "taskfile",
    "partition_widget": "taskfile",
    "TaskFileConfig": "taskfile",
    "build_task_file": "taskfile",
    "generate_task_file": "taskfile",
    "CandidateIndex": "retrieval",
    "top_k_per_keyword": "retrieval",
})
