"""One owner for each setting (issue 22): a setting's type, default, range and help are declared
once (``generate.config``'s fields, ``prompts.PROMPT_SETTINGS``, ``partition.PARTITION_SETTINGS``)
and the command-line flags, the app's fields and the workspace reader are derived from it.

* MM-Gen's command lines keep every flag, default, type and choice they had before the change
  (``tests/data/cli/flags_before_issue22.json``, captured from the parsers before it);
* a resumed run's identity is the one computed before the rename of ``model_name``;
* one declaration changed in a copy of the package shows in the flag, the app's field and the
  workspace reader; a declaration changed in memory shows on the Generate page (AppTest);
* ``clip_model`` / ``generator_model``: old ``workspace.json`` files and run records still load;
* one writer of the CLIP model spec; the pages restate no range.
"""

from __future__ import annotations

import argparse
import ast
import json
import shutil
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from mminstruct.errors import ConfigError, ModelSpecError
from mminstruct.generate import config as gen_config
from mminstruct.generate.config import (BOUNDS, DEFAULTS, RULES, SETTINGS, GenerationConfig,
                                        add_config_arguments, config_from_dict, number_widget)

REPO = Path(__file__).resolve().parents[1]
FLAGS_BEFORE = REPO / "tests" / "data" / "cli" / "flags_before_issue22.json"


def describe(parser: argparse.ArgumentParser) -> dict:
    """Every flag of a parser: its destination, default, type, choices, whether it is required,
    its action (the same description the capture before the change used)."""
    out = {}
    for a in parser._actions:
        if isinstance(a, argparse._HelpAction):
            continue
        d = a.default
        out["|".join(a.option_strings) or a.dest] = {
            "dest": a.dest,
            "default": d if isinstance(d, (int, float, str, bool, type(None))) else repr(d),
            "type": getattr(a.type, "__name__", None),
            "choices": list(a.choices) if a.choices else None,
            "required": a.required, "action": type(a).__name__, "nargs": a.nargs}
    return out


def _parsers() -> dict[str, argparse.ArgumentParser]:
    from mminstruct.commands import batch, generate, judge, prompts, task
    from mminstruct.quality import report

    return {"data_generator": generate.build_parser(), "batch_data_generator": batch.build_parser(),
            "judge": judge.build_parser(), "prompt_generator": prompts.build_parser(),
            "task_file_generator": task.build_parser(), "quality": report.build_parser()}


def test_the_command_lines_keep_every_flag_and_default() -> None:
    before = json.loads(FLAGS_BEFORE.read_text())
    now = {name: describe(p) for name, p in _parsers().items()}
    assert now.keys() == before.keys()
    for prog in before:
        assert now[prog] == before[prog], prog
    assert "--model_name" in now["data_generator"] and "--input_folder" in now["data_generator"]


def test_help_lists_the_same_flags(capsys) -> None:
    from mminstruct.commands.generate import main

    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    before = json.loads(FLAGS_BEFORE.read_text())["data_generator"]
    for flag in before:
        assert flag in out, flag


# ----------------------------------------------------------------------------------------------
# A run's identity (resume) is the one computed before the rename


def _fixed_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **kw) -> GenerationConfig:
    monkeypatch.setattr(gen_config, "file_sha256", lambda p: "ab" * 32)
    monkeypatch.setattr(GenerationConfig, "prompt_path",
                        property(lambda self: Path("/fixed/in/generated_prompts/p.json")))
    return GenerationConfig(input_folder=tmp_path, output_folder=tmp_path / "out",
                            prompt_file="p.json", file_prefix="run", **kw)


def test_a_runs_identity_is_byte_identical_to_before_the_rename(monkeypatch, tmp_path) -> None:
    # the values printed by the same construction on main before the change
    cfg = _fixed_config(monkeypatch, tmp_path, start_idx=2, num_prompts=5,
                        generator_model="gpt-4o-mini", max_image_side=512, jpeg_quality=80,
                        temperature=0.3, max_tokens=700, seed=7, structured_outputs=True,
                        format_fix_attempts=2)
    params = cfg.content_params()
    assert params["model_name"] == "gpt-4o-mini" and "generator_model" not in params
    assert cfg.identity(100) == "799bc615e04613138f2688c4c545f2185fec949753eba9d70aa39b8ebef91672"
    default = _fixed_config(monkeypatch, tmp_path)
    assert default.identity(10) == "56c23c079c235fa80a4d813ddc80df82a3691280fe7683e3f6c7ef8ec6b99169"


def test_a_run_record_written_before_the_rename_still_loads(tmp_path) -> None:
    from mminstruct.app.runs import RunInfo

    (tmp_path / "p.json").write_text("[]")
    old = {"input_folder": str(tmp_path), "output_folder": str(tmp_path), "prompt_file": "p.json",
           "file_prefix": "r", "model_name": "my-vlm", "endpoint": {}}
    assert config_from_dict(old).generator_model == "my-vlm"
    new = GenerationConfig(input_folder=tmp_path, output_folder=tmp_path, prompt_file="p.json",
                           file_prefix="r", generator_model="vlm-2")
    assert config_from_dict(new.public_json()).generator_model == "vlm-2"
    assert "model_name" not in new.public_json()
    info = RunInfo.__new__(RunInfo)
    for record, model in (({"config": old}, "my-vlm"), ({"config": new.public_json()}, "vlm-2")):
        info.record = record
        assert info.model == model


# ----------------------------------------------------------------------------------------------
# Derived from the declarations


def test_every_flag_default_rule_and_field_follows_the_declaration() -> None:
    from mminstruct.app.workspace import EndpointSettings, WorkspaceSettings

    p = argparse.ArgumentParser()
    add_config_arguments(p)
    args = p.parse_args(["--prompt_file", "p", "--file_prefix", "x"])
    flagged = [s for s in SETTINGS.values() if s.flag is not None]
    assert len(flagged) >= 35
    for s in flagged:
        if s.default is gen_config.UNSET or s.kind == "bool":
            continue
        want = s.to_flag(s.default) if s.to_flag else s.default
        assert getattr(args, s.dest) == want, s.name
    assert args.model_name == DEFAULTS["generator_model"] == gen_config.DEFAULT_GENERATOR_MODEL
    for name, (lo, hi) in BOUNDS.items():
        test, _ = RULES[name]
        assert test(lo) and test(hi) and not test(lo - 1) and not test(hi + 1), name
    # the workspace reader: a workspace.json without an endpoint section starts from the defaults
    shared = EndpointSettings().generation_values()
    assert len(shared) >= 9
    read = WorkspaceSettings().endpoint
    for name, value in shared.items():
        assert value == DEFAULTS[name] == getattr(read, name), name
        if SETTINGS[name].kind in ("int", "float"):  # the app's field holds the default
            w = number_widget(name)
            assert w["min_value"] <= (value or 0) <= w["max_value"], name
            if SETTINGS[name].max is not None:
                assert w["max_value"] == SETTINGS[name].max, name


def test_config_from_args_reads_every_flag_back() -> None:
    from mminstruct.commands.generate import build_parser

    args = build_parser().parse_args([
        "--prompt_file", "p", "--file_prefix", "x", "--model_name", "m1", "--concurrency", "9",
        "--batch_max_mb", "2", "--input_folder", "", "--base_url", "http://127.0.0.1:9/v1",
        "--azure_deployment", "d"])
    values = gen_config.values_from_args(args, gen_config.config_settings())
    assert values["generator_model"] == "m1" and values["concurrency"] == 9
    assert values["batch_max_bytes"] == 2 * 2**20 and values["input_folder"] == "."
    assert values["base_url"] == "http://127.0.0.1:9/v1" and values["azure_deployment"] == "d"


def test_a_declaration_changed_in_one_place_shows_in_the_flag_field_and_workspace(
        tmp_path: Path) -> None:
    """Edit one line of a copy of the package (the declaration) and read the flag's default, the
    app's field and the workspace reader's default: each shows the edit."""
    pkg = tmp_path / "mminstruct"
    shutil.copytree(REPO / "mminstruct", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    edits = {
        pkg / "generate" / "config.py": [
            ('concurrency: int = setting(64, section="limits", min=1, max=100_000,',
             'concurrency: int = setting(17, section="limits", min=1, max=4_321,')],
        pkg / "prompts" / "plan.py": [
            ("total_gen: int = setting(min=1, ui_max=10_000_000, ui_default=100,",
             "total_gen: int = setting(min=1, ui_max=77_777, ui_default=123,")],
        pkg / "partition" / "taskfile.py": [
            ('"low_margin": Setting(name="low_margin", kind="float", default=0.01, ui_min=0.0, '
             'ui_max=0.2,',
             '"low_margin": Setting(name="low_margin", kind="float", default=0.03, ui_min=0.0, '
             'ui_max=0.4,'),
            ("None, section=\"new\", min=1, metavar=\"K\", ui_max=1_000_000,",
             "None, section=\"new\", min=2, metavar=\"K\", ui_max=5_000,")],
    }
    for path, pairs in edits.items():
        text = path.read_text()
        for old, new in pairs:
            assert text.count(old) == 1, (path, old)  # the one declaration
            text = text.replace(old, new)
        path.write_text(text)
    probe = textwrap.dedent("""
        import json
        from mminstruct.commands.generate import build_parser
        from mminstruct.commands.prompts import build_parser as prompts_parser
        from mminstruct.commands.task import build_parser as task_parser
        from mminstruct.partition.taskfile import TaskFileConfig
        from mminstruct.generate import number_widget
        from mminstruct.prompts import prompt_widget
        from mminstruct.partition import partition_widget
        from mminstruct.app.workspace import settings_from_json
        from mminstruct.generate.config import check_values
        from mminstruct.errors import ConfigError
        args = build_parser().parse_args(["--prompt_file", "p", "--file_prefix", "x"])
        read = settings_from_json({})
        try:
            check_values({"concurrency": 4_322})
            refused = False
        except ConfigError:
            refused = True
        try:
            TaskFileConfig(data_file="d.json", keywords=["a"], candidates_per_keyword=1)
            k_refused = ""
        except ConfigError as e:
            k_refused = str(e)
        print(json.dumps({
            "flag": args.concurrency, "widget": number_widget("concurrency")["max_value"],
            "help": number_widget("concurrency", with_help=True)["help"], "reader": read.endpoint.concurrency,
            "refused": refused,
            "total_flag_required": [a.required for a in prompts_parser()._actions
                                    if a.dest == "total_gen"][0],
            "total_widget": prompt_widget("total_gen")["max_value"],
            "total_reader": read.prompts.total_gen,
            "margin_widget": partition_widget("low_margin")["max_value"],
            "margin_reader": read.partition.low_margin,
            "k_widget": partition_widget("candidates_per_keyword")["max_value"],
            "k_refused": k_refused,
            "k_flag_help": [a.help for a in task_parser()._actions
                            if a.dest == "candidates_per_keyword"][0]}))
    """)
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True,
                         text=True, check=False, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
                         timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"flag": 17, "widget": 4321, "help": "requests in flight (default 17)",
                   "reader": 17, "refused": True, "total_flag_required": True,
                   "total_widget": 77_777, "total_reader": 123, "margin_widget": 0.4,
                   "margin_reader": 0.03, "k_widget": 5_000,
                   "k_refused": "candidates_per_keyword must be an integer ≥ 2, got 1",
                   "k_flag_help": "take the K most similar candidates per keyword instead of "
                                  "the argmax"}


def test_the_generate_page_draws_its_fields_from_the_declarations(demo_ws, monkeypatch) -> None:
    from tests.fixtures.app import app_test, no_errors

    planted = replace(SETTINGS["concurrency"], min=2, max=333)
    monkeypatch.setitem(SETTINGS, "concurrency", planted)
    monkeypatch.setitem(SETTINGS, "max_retries", replace(SETTINGS["max_retries"], max=44))
    at = app_test(demo_ws).run()
    at.switch_page("pages/5_generate.py").run()
    no_errors(at)
    conc = at.number_input(key="ep_conc")
    assert (conc.min, conc.max) == (2, 333)
    assert at.number_input(key="ep_retries").max == 44
    assert at.number_input(key="ep_side").max == BOUNDS["max_image_side"][1]


# ----------------------------------------------------------------------------------------------
# Prompts and Partition: their fields' ranges are declared in the core


def test_prompt_and_partition_declarations_feed_the_rules_and_the_app() -> None:
    from mminstruct.app.workspace import PartitionSettings, PromptSettings, WorkspaceSettings, \
        validate_settings
    from mminstruct.partition import PARTITION_SETTINGS, partition_widget
    from mminstruct.prompts import PROMPT_SETTINGS, prompt_widget
    from mminstruct.prompts.plan import PROMPT_MINIMUMS, check_prompt_values

    p = PromptSettings()
    for name in ("total_gen", "min_gen_per_candidate", "num_icl_samples", "seed"):
        s = PROMPT_SETTINGS[name]
        assert getattr(p, name) == s.start and prompt_widget(name)["min_value"] == s.min
        assert PROMPT_MINIMUMS[name] == s.min
        with pytest.raises(ConfigError, match=f"{name} must be an integer ≥ {s.min}"):
            check_prompt_values({name: s.min - 1})
    assert p.total_gen == 100 and p.seed == 0  # the app's starting values (the CLI has none)
    assert PartitionSettings().low_margin == PARTITION_SETTINGS["low_margin"].default
    w = partition_widget("min_similarity")
    assert (w["min_value"], w["max_value"], w["step"]) == (-0.2, 1.0, 0.005)
    s = WorkspaceSettings()
    s.partition.min_similarity = 1.5
    with pytest.raises(ConfigError, match="min_similarity is 1.5; it must be between -1 and 1"):
        validate_settings(s)


def _bound_widget_calls(page: Path) -> list[ast.Call]:
    """The number fields and sliders of settings: bound to the workspace (``**bind``), or the
    judge's (``key="judge_…"``)."""
    calls = []
    for node in ast.walk(ast.parse(page.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in ("number_input", "slider") \
                and (any(isinstance(k.value, ast.Call) and getattr(k.value.func, "id", "") == "bind"
                         for k in node.keywords if k.arg is None)
                     or any(k.arg == "key" and isinstance(k.value, ast.Constant)
                            and str(k.value.value).startswith("judge_") for k in node.keywords)):
            calls.append(node)
    return calls


@pytest.mark.parametrize("page", ["3_partition.py", "4_prompts.py", "5_generate.py"])
def test_the_pages_restate_no_range(page: str) -> None:
    """Every settings-backed number field and slider takes its range from a declaration
    (``**number_widget``/``prompt_widget``/``partition_widget``): no number in the call."""
    calls = _bound_widget_calls(REPO / "pages" / page)
    assert len(calls) >= 3
    for call in calls:
        spread = [getattr(k.value.func, "id", "") for k in call.keywords if k.arg is None]
        assert any(n.endswith("_widget") for n in spread), ast.unparse(call)
        numbers = [n for arg in [*call.args, *(k.value for k in call.keywords
                                               if k.arg and k.arg != "value")]
                   for n in ast.walk(arg) if isinstance(n, ast.Constant)
                   and isinstance(n.value, (int, float)) and not isinstance(n.value, bool)]
        assert not numbers, ast.unparse(call)


def test_the_judges_flags_rules_and_fields_follow_its_declarations(monkeypatch, tmp_path) -> None:
    from mminstruct.commands.judge import build_parser
    from mminstruct.quality import judge_widget
    from mminstruct.quality.judge import JUDGE_SETTINGS, JudgeConfig

    monkeypatch.setitem(JUDGE_SETTINGS, "repeat", replace(JUDGE_SETTINGS["repeat"], default=3,
                                                          max=4))
    args = build_parser().parse_args(["--generated_file", "g.json"])
    assert args.repeat == 3 and args.sample_seed == JUDGE_SETTINGS["sample_seed"].default == 0
    (tmp_path / "g.json").write_text("[]")
    with pytest.raises(ConfigError, match="--repeat is 5; it must be between 1 and 4"):
        JudgeConfig(input_folder=tmp_path, output_folder=tmp_path, prompt_file="g.json",
                    file_prefix="j", output="s.jsonl", repeat=5)
    with pytest.raises(ConfigError, match=r"--sample is 1.5; it must be a fraction in \(0, 1\]"):
        JudgeConfig(input_folder=tmp_path, output_folder=tmp_path, prompt_file="g.json",
                    file_prefix="j", output="s.jsonl", sample=1.5)
    assert judge_widget("sample")["max_value"] == 1.0 and judge_widget("max_cost")["step"] == 1.0


# ----------------------------------------------------------------------------------------------
# clip_model and generator_model


def test_an_old_workspace_file_with_model_name_keys_loads_and_saves_the_new_names(tmp_path) -> None:
    from mminstruct.app.history import SETTINGS_NAME
    from mminstruct.app.workspace import Workspace

    root = tmp_path / "w"
    root.mkdir()
    (root / SETTINGS_NAME).write_text(json.dumps({
        "partition": {"model_name": "demo-charts", "keywords": ["a"]},
        "endpoint": {"model_name": "my-vlm", "concurrency": 5}}))
    ws = Workspace.open(root)
    assert ws.settings.partition.clip_model == "demo-charts"
    assert ws.settings.endpoint.generator_model == "my-vlm"
    ws.settings.endpoint.concurrency = 6
    ws.save()
    saved = json.loads((root / SETTINGS_NAME).read_text())
    assert saved["partition"]["clip_model"] == "demo-charts"
    assert saved["endpoint"]["generator_model"] == "my-vlm"
    assert "model_name" not in saved["partition"] and "model_name" not in saved["endpoint"]
    # both keys (a file edited by hand): the new name wins
    (root / SETTINGS_NAME).write_text(json.dumps(
        {"endpoint": {"model_name": "old", "generator_model": "new"}}))
    assert Workspace.open(root).settings.endpoint.generator_model == "new"


def test_the_generator_and_the_clip_model_have_their_own_names() -> None:
    from mminstruct.app.workspace import EndpointSettings, PartitionSettings
    from mminstruct.embed.clip import DEFAULT_CLIP_MODEL
    from mminstruct.partition.taskfile import TaskFileConfig
    from mminstruct.quality.report import QualityConfig

    assert EndpointSettings().generator_model == gen_config.DEFAULT_GENERATOR_MODEL
    assert PartitionSettings().clip_model == DEFAULT_CLIP_MODEL
    fields = {c: set(c.__dataclass_fields__) for c in (GenerationConfig, EndpointSettings,
                                                      PartitionSettings, TaskFileConfig,
                                                      QualityConfig)}
    assert all("model_name" not in f for f in fields.values())
    assert "generator_model" in fields[GenerationConfig] and "clip_model" in fields[TaskFileConfig]
    # the spelling of each default exists once in the core
    spelled = [p for p in (REPO / "mminstruct").rglob("*.py") if '"gpt-4o"' in p.read_text()]
    assert [p.relative_to(REPO).as_posix() for p in spelled] == ["mminstruct/generate/config.py"]


def test_one_writer_of_the_clip_model_spec(demo_ws) -> None:
    from mminstruct.app.model_choice import set_clip_model

    before = demo_ws.settings.partition.clip_model
    with pytest.raises(ModelSpecError):
        set_clip_model(demo_ws, "ResNet-9000:nope")
    assert demo_ws.settings.partition.clip_model == before  # a bad spec changes nothing
    set_clip_model(demo_ws, " demo-charts ")
    assert demo_ws.settings.partition.clip_model == "demo-charts"
    # nothing else in the app assigns the setting
    writers = []
    for d in ("mminstruct", "ui", "pages"):
        for p in (REPO / d).rglob("*.py"):
            for node in ast.walk(ast.parse(p.read_text())):
                if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    if any(isinstance(t, ast.Attribute) and t.attr == "clip_model" for t in targets):
                        writers.append(p.relative_to(REPO).as_posix())
    assert writers == ["mminstruct/app/model_choice.py"]
