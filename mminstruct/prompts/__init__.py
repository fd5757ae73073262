"""Prompt planning (``plan``): allocation per subgroup (MM-Gen's rule, budgets), the one sampler,
in-context examples, the streamed prompt-file writer.
"""

from mminstruct.lazy import public

__all__, __getattr__ = public(__name__, {
    "PromptConfig": "plan",
    "PROMPT_DEFAULTS": "plan",
    "PROMPT_SETTINGS": "plan",
    "prompt_widget": "plan",
    "plan_prompts": "plan",
    "prepare_plan": "plan",
    "write_prompts": "plan",
    "generate_prompt_file": "plan",
    "allocate": "plan",
    "parse_budgets": "plan",
    "Budget": "plan",
})
