"""The services behind the app's pages (no streamlit here): a workspace's settings and folders
(``workspace``), uploads (``uploads``), the live partition and task file (``curation``), prompt
previews and estimates (``preview``), background runs (``runs``), review and export (``review``),
the CLIP model choice (``model_choice``). Pages call these; the pipeline below never imports them.
"""
