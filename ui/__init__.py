"""Shared Streamlit widgets for the app's pages: workspace session state, safe text, thumbnails and
galleries, the prompt renderer, the map, and the sidebar. Pipeline logic lives in ``mminstruct``."""
