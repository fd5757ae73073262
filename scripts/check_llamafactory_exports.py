"""Load mminstruct's exports with LLaMA-Factory's own dataset code (a manual check, not part of CI).

LLaMA-Factory is not a dependency. Point this at a checkout of github.com/hiyouga/LLaMA-Factory, or
at a bare git directory of it (``--llamafactory PATH [--commit REV]``); the script copies its
``data/parser.py``, ``data/converter.py``, ``data/data_utils.py``, ``extras/logging.py`` and
``extras/constants.py`` into a temporary package, with placeholders for the heavy libraries those
files import only for names this check does not use (torch-side ``peft``/``transformers``
constants, ``datasets``' merge helpers, ``fsspec``, the hub download), then for each export:

1. reads ``dataset_info.json`` with LLaMA-Factory's ``get_dataset_list`` (its real ``DatasetAttr``);
2. loads the rows as its JSON loader hands them over (a declared column absent from a row is a
   KeyError there; Arrow would fill it with None only when some row has it);
3. converts every row with its real ``SharegptDatasetConverter`` (``media_dir`` = ``dataset_dir``,
   its default), which drops a row with bad roles or message counts (empty ``_prompt``);
4. applies mm_plugin's check (``_validate_messages``: the number of ``IMAGE_PLACEHOLDER`` tokens in
   the messages equals the number of images) and that every ``_images`` path is a file.

    python scripts/check_llamafactory_exports.py --llamafactory /path/to/LLaMA-Factory

Prints one line per export (rows loaded / rows in the file) and exits 1 if any row fails.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import tempfile
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FILES = ("data/parser.py", "data/converter.py", "data/data_utils.py", "extras/logging.py",
         "extras/constants.py")


def _read(source: Path, commit: str, rel: str) -> str:
    path = f"src/llamafactory/{rel}"
    if (source / "src" / "llamafactory").is_dir():
        return (source / path).read_text(encoding="utf-8")
    return subprocess.run(["git", "--git-dir", str(source), "show", f"{commit}:{path}"],
                          check=True, capture_output=True, text=True).stdout


def _placeholders() -> None:
    """Names the copied modules import at module level but this check never calls."""
    def module(name: str, **attrs) -> None:
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        sys.modules[name] = m

    def unused(*_a, **_k):
        raise RuntimeError("not used by this check")

    module("peft")
    module("peft.utils", SAFETENSORS_WEIGHTS_NAME="adapter_model.safetensors",
           WEIGHTS_NAME="adapter_model.bin")
    module("transformers")
    module("transformers.utils", SAFE_WEIGHTS_INDEX_NAME="x", SAFE_WEIGHTS_NAME="x",
           WEIGHTS_INDEX_NAME="x", WEIGHTS_NAME="x")
    module("datasets", DatasetDict=dict, concatenate_datasets=unused, interleave_datasets=unused)
    module("fsspec")
    module("huggingface_hub", hf_hub_download=unused)


def load_llamafactory(source: Path, commit: str, into: Path):
    pkg = into / "llamafactory"
    for rel in FILES:
        dest = pkg / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(_read(source, commit, rel), encoding="utf-8")
    for d in (pkg, pkg / "data", pkg / "extras"):
        (d / "__init__.py").write_text("")
    (pkg / "extras" / "misc.py").write_text(
        "def use_modelscope():\n    return False\n\n\ndef use_openmind():\n    return False\n")
    _placeholders()
    sys.path.insert(0, str(into))
    parser = importlib.import_module("llamafactory.data.parser")
    converter = importlib.import_module("llamafactory.data.converter")
    constants = importlib.import_module("llamafactory.extras.constants")
    return parser, converter, constants


def check_export(lf, export: Path, name: str) -> tuple[int, int, list[str]]:
    parser, converter, constants = lf
    folder = export.parent
    [attr] = parser.get_dataset_list([name], str(folder))
    rows = json.loads(export.read_text(encoding="utf-8"))
    data_args = types.SimpleNamespace(media_dir=str(folder))  # DataArguments: defaults to dataset_dir
    conv = converter.get_dataset_converter(attr.formatting, attr, data_args)
    errors: list[str] = []
    ok = 0
    for k, row in enumerate(rows):
        try:
            out = conv(row)
        except KeyError as e:
            errors.append(f"row {k}: KeyError {e}")
            continue
        if not out["_prompt"] or not out["_response"]:
            errors.append(f"row {k}: dropped by the converter (roles or message count)")
            continue
        messages = out["_prompt"] + out["_response"]
        images = out["_images"] or []
        tokens = sum(m["content"].count(constants.IMAGE_PLACEHOLDER) for m in messages)
        if tokens != len(images):  # mm_plugin._validate_messages
            errors.append(f"row {k}: The number of images does not match the number of "
                          f"{constants.IMAGE_PLACEHOLDER} tokens ({len(images)} vs {tokens})")
            continue
        missing = [i for i in images if not Path(i).is_file()]
        if missing:
            errors.append(f"row {k}: image not found: {missing[0]}")
            continue
        ok += 1
    return ok, len(rows), errors


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llamafactory", required=True, type=Path,
                    help="a LLaMA-Factory checkout, or its bare git directory")
    ap.add_argument("--commit", default="HEAD", help="revision, for a git directory (default HEAD)")
    args = ap.parse_args(argv)

    from mminstruct.export.formats import export_file
    from tests.test_export import _generated  # vqa, nr, tqa, descript, multi-turn, odd tokens

    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        lf = load_llamafactory(args.llamafactory, args.commit, tmp_path / "lf")
        generated = _generated(tmp_path)
        input_folder = tmp_path / "input"
        cases = [
            ("sharegpt", "sharegpt_relative", {}, ()),
            ("sharegpt", "sharegpt_absolute", {"absolute_paths": True}, ()),
            ("sharegpt", "sharegpt_text_only", {}, set(range(10)) - {3, 4}),
            ("llava", "llava_images_only", {}, {3, 4}),
            ("llava", "llava_text_only", {}, set(range(10)) - {3, 4}),
        ]
        for fmt, name, kw, rejected in cases:
            dest = tmp_path / "exports" / f"{name}.json"
            report = export_file(generated, dest, fmt, rejected=rejected, **kw)
            ok, total, errors = check_export(lf, dest, report.dataset_name)
            print(f"{name}: LLaMA-Factory loaded {ok} of {total} rows"
                  + (f"; {len(errors)} failed: {errors[0]}" if errors else ""))
            failed |= bool(errors) or ok != total
        # image_root: relative to the input folder, with media_dir set to it
        dest = tmp_path / "exports2" / "sharegpt_image_root.json"
        report = export_file(generated, dest, "sharegpt", image_root=input_folder)
        parser, converter, constants = lf
        [attr] = parser.get_dataset_list([report.dataset_name], str(dest.parent))
        conv = converter.get_dataset_converter(
            attr.formatting, attr, types.SimpleNamespace(media_dir=str(input_folder)))
        rows = json.loads(dest.read_text())
        good = sum(1 for r in rows if all(Path(i).is_file() for i in (conv(r)["_images"] or [])))
        print(f"sharegpt_image_root (media_dir={input_folder.name}): LLaMA-Factory loaded "
              f"{good} of {len(rows)} rows")
        failed |= good != len(rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
