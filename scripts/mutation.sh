#!/usr/bin/env bash
# Mutation testing of one core module with mutmut (docs/testing.md):
#   scripts/mutation.sh partition            # mminstruct/partition/assign.py vs tests/test_partition.py
# Runs in a scratch copy of the working tree (never touches the checkout) with the [tool.mutmut]
# section of pyproject.toml narrowed to the module and its fast test files, at nice 19 and under
# a time limit (MUTATION_TIMEOUT seconds, default 1800); MUTATION_ONLY narrows it to some functions.
# Prints mutmut's results: every surviving mutant by name; `mutmut show NAME` in the printed folder
# shows its diff.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-$here/.venv/bin/python}"  # scripts/setup.sh makes .venv; PYTHON=... overrides
[ -x "$py" ] || py="$(command -v python3)"
names="records, partition, prompts, export, quality, quality-text, output, runlog"
mod="${1:?usage: scripts/mutation.sh MODULE (one of: $names)}"
case "$mod" in
  records)   src="mminstruct/data/records.py";    tests="tests/test_records_load.py tests/test_formats.py tests/test_records_fast.py tests/test_records_units.py" ;;
  partition) src="mminstruct/partition/assign.py";tests="tests/test_partition.py" ;;
  prompts)   src="mminstruct/prompts/plan.py";    tests="tests/test_prompts.py tests/test_budgets.py" ;;
  export)    src="mminstruct/export/formats.py";  tests="tests/test_export.py tests/test_export_hf.py tests/test_export_units.py" ;;
  quality)   src="mminstruct/quality/report.py";  tests="tests/test_quality.py tests/test_quality_units.py" ;;
  quality-text) src="mminstruct/quality/text.py"; tests="tests/test_quality.py" ;;
  output)    src="mminstruct/generate/output.py"; tests="tests/test_generate_output.py tests/test_generate_modes.py tests/test_conversation_mode.py tests/test_generate_output_units.py" ;;
  runlog)    src="mminstruct/generate/runlog.py"; tests="tests/test_generate_resume.py tests/test_runs.py" ;;
  *) echo "unknown module '$mod'; choose one of: $names" >&2
     exit 2 ;;
esac
work="${MUTATION_DIR:-$(mktemp -d /tmp/mutation.XXXXXX)}"
mkdir -p "$work"
# the working tree as it is (tracked and untracked, not ignored), without mutmut's old output
(cd "$here" && git ls-files -co --exclude-standard -z | grep -zv '^mutants/' \
   | xargs -0 cp --parents -t "$work")
"$py" - "$work/pyproject.toml" "$src" $tests <<'PY'
import re, sys
path, src, tests = sys.argv[1], sys.argv[2], sys.argv[3:]
text = open(path).read()
head, sep, _ = text.partition("[tool.mutmut]")
if not sep:
    sys.exit(f"{path}: no [tool.mutmut] section")
q = lambda xs: "[" + ", ".join(f'"{x}"' for x in xs) + "]"
open(path, "w").write(head + "[tool.mutmut]\nsource_paths = [\"mminstruct/\"]\n"
                      f"only_mutate = {q([src])}\npytest_add_cli_args_test_selection = {q(tests)}\n"
                      'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x"]\n'
                      'also_copy = ["sitecustomize.py"]\n')
PY
# Tests that run a command (python -m mminstruct.…) start a new interpreter in another folder, with
# PYTHONPATH = the copy mutmut tests (mutants/). mutmut's trampolines there look for its config in
# the current folder and fail ("Could not figure out where the code to mutate is"), so the clean
# run fails. This sitecustomize (scratch copy only) loads the config from mutants/ first.
cat > "$work/sitecustomize.py" <<'SC'
import os

if os.environ.get("MUTANT_UNDER_TEST") is not None and os.environ.get("MUTATION_CONFIG_DIR"):
    _cwd = os.getcwd()
    try:
        os.chdir(os.environ["MUTATION_CONFIG_DIR"])
        from mutmut.configuration import config

        config()
    finally:
        os.chdir(_cwd)
SC
echo "mutating $src against $tests in $work" >&2
cd "$work"
export PYTHONPATH="$work" CI=true MUTATION_CONFIG_DIR="$work/mutants"
status=0
# MUTATION_ONLY: narrow the run to some functions, as mutmut names them (globs, space-separated),
# e.g. MUTATION_ONLY='mminstruct.export.formats.x_prepare__mutmut_*' (a module too large to finish)
# shellcheck disable=SC2086  # (word splitting of MUTATION_ONLY is meant; the globs stay quoted)
set -f
timeout "${MUTATION_TIMEOUT:-1800}" nice -n 19 "$py" -m mutmut run --max-children "${MUTATION_JOBS:-2}" \
  ${MUTATION_ONLY:-} || status=$?
set +f
"$py" -m mutmut results || true
echo "results kept in $work (cd there; $py -m mutmut show NAME)" >&2
exit $status
