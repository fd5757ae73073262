"""A chat request rendered as the model receives it: the system message, then the user message's
parts in order — texts as plain text, images as the very JPEGs that are sent (decoded from the
request's data URLs) — labelled in-context example or candidate, and the generation prompt last."""

from __future__ import annotations

import base64
from typing import Any

import streamlit as st


def _jpeg(url: str) -> bytes | None:
    head, _, b64 = url.partition(",")
    if not head.startswith("data:") or not b64:
        return None
    return base64.b64decode(b64)


def render_messages(messages: list[dict[str, Any]], *, candidate_last: bool = True,
                    image_width: int = 240) -> None:
    """Show ``messages`` (OpenAI chat format). Text is shown with ``st.text`` (never markup)."""
    for msg in messages:
        role = msg.get("role", "?")
        content = msg.get("content")
        with st.container(border=True):
            st.markdown(f"**{'System message' if role == 'system' else 'User message'}**")
            if isinstance(content, str):
                st.text(content)
                continue
            parts = list(content or [])
            image_positions = [i for i, p in enumerate(parts) if p.get("type") == "image_url"]
            last_image = image_positions[-1] if image_positions and candidate_last else None
            n_images = 0
            for i, part in enumerate(parts):
                if part.get("type") == "image_url":
                    n_images += 1
                    url = part.get("image_url", {}).get("url", "")
                    jpeg = _jpeg(url)
                    label = ("Candidate image (the new image to write about)" if i == last_image
                             else f"In-context example image {n_images}")
                    st.caption(f"{label} · {len(url) * 3 // 4 // 1024} KB as sent")
                    if jpeg:
                        st.image(jpeg, width=image_width)
                elif part.get("type") == "text":
                    is_last = i == len(parts) - 1
                    if is_last:
                        st.caption("Generation prompt")
                    st.text(part.get("text", ""))
