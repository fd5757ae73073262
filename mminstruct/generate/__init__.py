"""Step 3: the generation engine and its files. The API the app drives:

* ``GenerationConfig`` (+ ``EndpointConfig``): what to run;
* ``run_generation(cfg, control=, on_progress=)`` (blocking) / ``run_async`` → ``RunResult``;
  ``run_shards`` for batch_data_generator's shards;
* ``RunControl`` (``cancel``/``pause``/``unpause`` in-process), ``request_cancel(run_dir)`` /
  ``request_pause(run_dir)`` from another process, ``read_status(run_dir)``;
* ``latest_unfinished(output_folder, prefix)`` / ``list_runs`` to find runs to resume;
* ``load_output`` / ``iter_output`` / ``merge_outputs`` (exports: ``mminstruct.export.formats``).
"""

from mminstruct.generate.config import (BOUNDS, DEFAULT_GENERATOR_MODEL, DEFAULTS, GenerationConfig,
                                        config_from_dict, number_widget, resolve_prompt_file)
from mminstruct.generate.control import RunControl, RunStatus, read_status, request_cancel, request_pause
from mminstruct.generate.engine import RunResult, run_async, run_generation
from mminstruct.generate.output import GeneratedData, iter_output, load_output, merge_outputs
from mminstruct.generate.runlog import latest_unfinished, list_runs, open_run
from mminstruct.generate.shards import run_shards, run_shards_async

__all__ = ["BOUNDS", "DEFAULT_GENERATOR_MODEL", "DEFAULTS", "GenerationConfig", "config_from_dict",
           "number_widget",
           "resolve_prompt_file", "RunControl",
           "RunStatus", "read_status", "request_cancel", "request_pause", "RunResult",
           "run_async", "run_generation", "GeneratedData", "iter_output", "load_output",
           "merge_outputs",
           "latest_unfinished", "list_runs", "open_run", "run_shards", "run_shards_async"]
