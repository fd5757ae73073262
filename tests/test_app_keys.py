"""Keys go only where the user sent them: a key typed in the session belongs to the workspace and
base URL it was typed for. Two local listeners on 127.0.0.1: "A", the endpoint the key was typed
for, and "B", standing in for any other endpoint (api.openai.com included)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mminstruct.app.workspace import Workspace
from tests.fixtures.app import app_test, make_demo_workspace, no_errors
from tests.fixtures.llm import FAKE_KEY

SUBMIT = "FormSubmitter:endpoint_form-Save endpoint settings"


class Listener:
    """A local HTTP server answering ``GET /v1/models``; records every request's headers."""

    def __init__(self) -> None:
        seen = self.requests = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append((self.path, dict(self.headers)))
                body = json.dumps({"data": [{"id": "m"}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def keys_seen(self) -> list[str]:
        return [h.get("Authorization", "") for _, h in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def listeners():
    a, b = Listener(), Listener()
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def ws_a(demo_ws: Workspace, listeners, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    demo_ws.settings.endpoint.base_url = listeners[0].url
    demo_ws.save()
    return demo_ws


def _type_key(at) -> None:
    at.switch_page("pages/5_generate.py").run()
    at.text_input(key="key_input").set_value(FAKE_KEY)
    at.button(key="FormSubmitter:key_form-Use this key").click().run()
    no_errors(at)


def test_the_key_goes_to_its_endpoint_only_and_is_dropped_when_the_base_url_changes(
        ws_a: Workspace, listeners) -> None:
    a, b = listeners
    at = app_test(ws_a).run()
    _type_key(at)
    assert any("typed in this session" in c.value for c in at.caption)
    at.text_input(key="ep_base").set_value(b.url)
    at.button(key=SUBMIT).click().run()
    no_errors(at)
    assert Workspace.open(ws_a.root).settings.endpoint.base_url == b.url
    assert any("API key: none" in c.value for c in at.caption)  # dropped
    assert "_api_key" not in at.session_state
    # a session still holding a key typed for A, with B now saved: the sidebar checks B by
    # itself (a saved endpoint), without the key
    again = app_test(Workspace.open(ws_a.root))
    again.session_state["_api_key"] = {"key": FAKE_KEY, "scope": (str(ws_a.root), a.url)}
    again.run()
    no_errors(again)
    assert b.requests, "the saved endpoint B was not checked"
    assert all(FAKE_KEY not in k for k in b.keys_seen()), b.keys_seen()
    # back to A: the key does not come back
    at.text_input(key="ep_base").set_value(a.url)
    at.button(key=SUBMIT).click().run()
    assert any("API key: none" in c.value for c in at.caption)
    assert all(FAKE_KEY not in k for k in b.keys_seen())


def test_a_new_workspace_does_not_inherit_the_key(ws_a: Workspace, listeners, app_home,
                                                  demo_data, tiny_clip) -> None:
    a, b = listeners
    other = make_demo_workspace(app_home / "workspaces" / "other", demo_data, tiny_clip.spec)
    other.settings.endpoint.base_url = b.url  # a saved endpoint, configured in that workspace
    other.save()
    at = app_test(ws_a).run()
    _type_key(at)
    at.session_state["ws_path"] = str(other.root)  # as the sidebar's "Open" does
    at.run()
    no_errors(at)
    assert any("API key: none" in c.value for c in at.caption)
    fresh = app_test(other).run()  # the sidebar (drawn on a first run) checks B by itself
    no_errors(fresh)
    assert b.requests and all(FAKE_KEY not in k for k in b.keys_seen()), b.keys_seen()
    # the same base URL in the other workspace does not get the key either
    other.settings.endpoint.base_url = a.url
    other.save()
    at.run()
    assert any("API key: none" in c.value for c in at.caption)


def test_the_default_url_is_never_contacted_by_itself(ws_a: Workspace, listeners,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = listeners
    monkeypatch.setenv("OPENAI_BASE_URL", b.url)  # B stands in for api.openai.com
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    ws_a.settings.endpoint.base_url = ""
    ws_a.save()
    at = app_test(ws_a).run()
    no_errors(at)
    assert any("contacted only when you ask" in c.value for c in at.sidebar.caption)
    at.switch_page("pages/5_generate.py").run()
    at.switch_page("pages/4_prompts.py").run()
    assert b.requests == [] and a.requests == []
    assert at.session_state["ws_path"] == str(ws_a.root)
    # (the "Check the endpoint" click is in tests/test_browser.py: AppTest draws the sidebar
    # on the first run only)


def test_a_saved_base_url_is_checked_with_its_own_key(ws_a: Workspace, listeners) -> None:
    a, b = listeners
    at = app_test(ws_a).run()
    _type_key(at)
    at2 = app_test(ws_a)
    at2.session_state["_api_key"] = {"key": FAKE_KEY, "scope": (str(ws_a.root), a.url)}
    at2.run()
    assert any(FAKE_KEY in k for k in a.keys_seen())
    assert b.requests == []



def test_a_resumed_run_gets_the_typed_key_only_for_its_own_base_url(ws_a: Workspace,
                                                                     listeners) -> None:
    """A run started against A, resumed after the base URL became B (and a key was typed for B):
    the key typed for B is not given to the run (which sends to A)."""
    from streamlit.testing.v1 import AppTest

    a, b = listeners
    script = (
        "import streamlit as st\n"
        "from mminstruct.app.workspace import Workspace\n"
        "from ui.state import api_key, set_typed_key\n"
        f"ws = Workspace.open({str(ws_a.root)!r})\n"
        f"ws.settings.endpoint.base_url = {b.url!r}\n"
        "set_typed_key(ws, 'typed-for-b')\n"
        f"st.text(repr(api_key(ws, for_base_url={a.url!r})[0]))\n"
        f"st.text(repr(api_key(ws, for_base_url={b.url!r})[0]))\n"
        "st.text(repr(api_key(ws)[0]))\n")
    at = AppTest.from_string(script).run()
    no_errors(at)
    assert [t.value for t in at.text] == ["None", "'typed-for-b'", "'typed-for-b'"]
