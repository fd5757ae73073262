"""Nothing a person makes is lost, through AppTest: a form save writes only the fields changed
here (another tab's edits survive; a field whose state was dropped is never written back); a
failed load (unparsable upload or path, no usable record, a missing image folder) changes nothing
and says what was kept; "Open the demo" over curation asks first, and Cancel keeps everything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mminstruct.app import history
from mminstruct.app.workspace import Workspace
from tests.fixtures.app import app_test, no_errors

SUBMIT = "FormSubmitter:endpoint_form-Save endpoint settings"


@pytest.fixture
def curated(demo_ws: Workspace) -> Workspace:
    ws = Workspace.open(demo_ws.root)
    ws.set_excluded("reference", [1, 2])
    ws.settings.prompts.budgets = {"bar chart": "10"}
    ws.settings.endpoint.concurrency = 16
    ws.save()
    return ws


def _state(ws: Workspace) -> dict:
    s = json.loads((ws.root / "workspace.json").read_text())
    return s


def test_a_form_save_writes_only_what_was_changed_here(curated: Workspace) -> None:
    at = app_test(curated).run()
    at.switch_page("pages/5_generate.py").run()
    no_errors(at)
    other = Workspace.open(curated.root)  # another tab saves two fields of the same form
    other.settings.endpoint.concurrency = 5
    other.settings.endpoint.timeout = 7.0
    other.save()
    at.text_input(key="ep_model").set_value("m9")
    at.button(key=SUBMIT).click().run()
    no_errors(at)
    ep = Workspace.open(curated.root).settings.endpoint
    assert (ep.generator_model, ep.concurrency, ep.timeout) == ("m9", 5, 7.0)
    assert history.entries(curated.root)[-1].changes == ["generator_model gpt-4o → m9"]
    assert history.entries(curated.root)[-1].page == "Generate"


def test_a_field_whose_state_was_dropped_is_never_written(curated: Workspace) -> None:
    at = app_test(curated).run()
    at.switch_page("pages/5_generate.py").run()
    before = _state(curated)
    # the field's state was lost (another workspace, a page that stopped early) and it shows a
    # minimum: a save of the form must not write it
    del at.session_state["_bound:ep_conc"]
    at.session_state["ep_conc"] = 1
    at.button(key=SUBMIT).click().run()
    assert _state(curated) == before


def _point_at(at, path: Path, images: str = "") -> None:
    at.text_input(key="srv_data").set_value(str(path))
    at.text_input(key="srv_images").set_value(images).run()
    at.button(key="srv_go").click().run()


@pytest.mark.parametrize("bad", ["unparsable", "no_valid_record", "no_image_folder"])
def test_a_failed_load_from_a_path_changes_nothing(curated: Workspace, tmp_path: Path,
                                                   bad: str) -> None:
    before = _state(curated)
    f = tmp_path / "bad.json"
    if bad == "unparsable":
        f.write_text('[{"id": "x", "conversations": [')
    else:
        f.write_text(json.dumps([{"id": "x", "image": "nope.png", "conversations": [
            {"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]}]))
    at = app_test(curated).run()
    _point_at(at, f, "missing_folder" if bad == "no_image_folder" else "")
    at.button(key="confirm_server").click().run()  # it asks first: the workspace has curation
    errors = [e.value for e in at.error]
    assert errors and errors[0].startswith("Not loaded"), errors
    assert any("Nothing was changed" in c.value and "excluded reference" in c.value
               for c in at.caption)
    assert _state(curated) == before


def test_an_unparsable_upload_changes_nothing(curated: Workspace) -> None:
    before = _state(curated)
    previous = Path(curated.settings.data.data_file).read_bytes()
    at = app_test(curated).run()
    at.file_uploader(key="up_data").upload("broken.json", b"{not json", "application/json").run()
    at.button(key="up_go").click().run()
    at.button(key="confirm_upload").click().run()  # it asks first: the workspace has curation
    assert at.error and at.error[0].value.startswith("Not loaded")
    assert _state(curated) == before
    assert Path(curated.settings.data.data_file).read_bytes() == previous
    assert not (curated.uploads_dir / "broken.json").exists()


def test_open_the_demo_over_curation_asks_and_cancel_keeps_everything(curated: Workspace) -> None:
    before = _state(curated)
    at = app_test(curated).run()
    at.button(key="open_demo").click().run()
    no_errors(at)
    asked = [w.value for w in at.warning if "replaces its curation" in w.value]
    assert asked and "2 excluded reference samples" in asked[0] and "1 budget" in asked[0]
    at.button(key="cancel_demo").click().run()
    assert _state(curated) == before
    at.button(key="open_demo").click().run()
    at.button(key="confirm_demo").click().run()
    no_errors(at)
    s = Workspace.open(curated.root).settings
    assert s.partition.excluded_reference == [] and s.prompts.budgets == {}
    history.undo(curated.root)  # and it can be undone
    s = Workspace.open(curated.root).settings
    assert s.partition.excluded_reference == [1, 2] and s.prompts.budgets == {"bar chart": "10"}
