"""mminstruct's curation app: ``streamlit run app.py``.

Six pages over one workspace — Data → Explore → Partition → Prompts → Generate → Review. This file
only sets up the page and the navigation; each page imports what it needs (torch, open_clip, umap
and plotly load only on the pages that use them, so the first page renders fast).
"""

import streamlit as st

# No page icons: Streamlit fetches a :material/…: favicon from fonts.gstatic.com, and the app makes
# no request outside this machine.
st.set_page_config(page_title="mminstruct", layout="wide")

from ui.sidebar import sidebar  # noqa: E402  (after set_page_config)
from ui.state import GOTO, NAV_FLAG  # noqa: E402

PAGES = [
    st.Page("pages/1_data.py", title="Data", default=True),
    st.Page("pages/2_explore.py", title="Explore"),
    st.Page("pages/3_partition.py", title="Partition"),
    st.Page("pages/4_prompts.py", title="Prompts"),
    st.Page("pages/5_generate.py", title="Generate"),
    st.Page("pages/6_review.py", title="Review"),
]

navigation = st.navigation(PAGES)
st.session_state[NAV_FLAG] = True
if st.session_state.get(GOTO):  # a page opened by its own URL came here first (ui.state.through_app)
    st.switch_page(st.session_state.pop(GOTO))
sidebar()
navigation.run()
