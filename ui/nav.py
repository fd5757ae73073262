"""The app's pages, listed once: app.py's navigation, every ``st.page_link``, every
``st.switch_page`` and the history's page names read them from here (a test checks that no other
file spells a page's path)."""

from __future__ import annotations

MAIN = "app.py"  # the entry script: its navigation holds the pages below
DATA = "pages/1_data.py"
EXPLORE = "pages/2_explore.py"
PARTITION = "pages/3_partition.py"
PROMPTS = "pages/4_prompts.py"
GENERATE = "pages/5_generate.py"
REVIEW = "pages/6_review.py"

#: (path, title) in the order of the navigation; the first is the default page.
PAGES: tuple[tuple[str, str], ...] = (
    (DATA, "Data"), (EXPLORE, "Explore"), (PARTITION, "Partition"), (PROMPTS, "Prompts"),
    (GENERATE, "Generate"), (REVIEW, "Review"))
TITLES: dict[str, str] = dict(PAGES)
