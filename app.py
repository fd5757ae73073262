"""mminstruct's curation app: ``streamlit run app.py``.

Six pages over one workspace — Data → Explore → Partition → Prompts → Generate → Review. This file
only sets up the page and the navigation; each page imports what it needs (torch, open_clip, umap
and plotly load only on the pages that use them, so the first page renders fast).
"""

import streamlit as st

st.set_page_config(page_title="mminstruct", page_icon=":material/dataset:", layout="wide")

from ui.sidebar import sidebar  # noqa: E402  (after set_page_config)

PAGES = [
    st.Page("pages/1_data.py", title="Data", icon=":material/folder_open:", default=True),
    st.Page("pages/2_explore.py", title="Explore", icon=":material/scatter_plot:"),
    st.Page("pages/3_partition.py", title="Partition", icon=":material/category:"),
    st.Page("pages/4_prompts.py", title="Prompts", icon=":material/chat:"),
    st.Page("pages/5_generate.py", title="Generate", icon=":material/rocket_launch:"),
    st.Page("pages/6_review.py", title="Review", icon=":material/fact_check:"),
]

navigation = st.navigation(PAGES)
sidebar()
navigation.run()
