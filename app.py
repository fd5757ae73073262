"""mminstruct's curation app: ``streamlit run app.py``.

Six pages over one workspace — Data → Explore → Partition → Prompts → Generate → Review. This file
only sets up the page and the navigation; each page imports what it needs (torch, open_clip, umap
and plotly load only on the pages that use them, so the first page renders fast).
"""

import streamlit as st

# No page icons: Streamlit fetches a :material/…: favicon from fonts.gstatic.com, and the app makes
# no request outside this machine.
st.set_page_config(page_title="mminstruct", layout="wide")

from ui import nav  # noqa: E402
from ui.sidebar import sidebar  # noqa: E402  (after set_page_config)
from ui.state import GOTO, NAV_FLAG  # noqa: E402

PAGES = [st.Page(path, title=title, default=i == 0) for i, (path, title) in enumerate(nav.PAGES)]

navigation = st.navigation(PAGES)
st.session_state[NAV_FLAG] = True
if st.session_state.get(GOTO):  # a page opened by its own URL came here first (ui.state.through_app)
    st.switch_page(st.session_state.pop(GOTO))
sidebar()
navigation.run()
