"""Reading data: LLaVA-format data files and their records (``records``), MM-Gen task and prompt
files and the run folders' names (``formats``), the prompt modes and their JSON keys (``modes``),
images (``images``: safe paths, the one decoder, JPEG encoding).
"""

from mminstruct.lazy import public

__all__, __getattr__ = public(__name__, {
    "load_data_file": "records",
    "DataFile": "records",
    "Record": "records",
    "parse_record": "records",
    "parse_once": "records",
    "load_task_file": "formats",
    "load_prompt_file": "formats",
    "TaskFile": "formats",
    "PromptFile": "formats",
    "check_file_prefix": "formats",
    "Mode": "modes",
    "MODE_NAMES": "modes",
    "parse_mode": "modes",
    "resolve_image_path": "images",
    "list_image_files": "images",
    "open_image": "images",
    "ImageRoot": "images",
})
