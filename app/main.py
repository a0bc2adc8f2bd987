"""Persona Space: the Streamlit entry point (`streamlit run app/main.py`)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

ROOT = Path(__file__).resolve().parents[1]  # `app` and `backend` are installed (make setup: pip install -e .)

# The favicon is a file of ours, served by the app. (A ":material/...:" icon makes the favicon a request to
# fonts.gstatic.com, and an emoji needs an emoji font the machine may lack: nothing may leave the machine.)
st.set_page_config(page_title="Persona Space", page_icon=str(ROOT / "assets" / "icon.png"), layout="wide")
# The toolbar keeps what a viewer needs (`client.toolbarMode = "viewer"` in .streamlit/config.toml drops Deploy). The
# header's running indicator offers "Stop", which would halt the page's own live parts (they rerun every half second)
# in the middle of a chat or a demo: its buttons are hidden, the indicator stays.
st.html("<style>[data-testid='stStatusWidget'] button {display: none !important;}</style>")
pages = [
    st.Page(str(ROOT / "app" / "views" / "space.py"), title="Persona space", default=True),
    st.Page(str(ROOT / "app" / "views" / "chat.py"), title="Live chat", url_path="chat"),
    st.Page(str(ROOT / "app" / "views" / "transcripts.py"), title="Transcripts", url_path="transcripts"),
    st.Page(str(ROOT / "app" / "views" / "demo.py"), title="Demo", url_path="demo"),
    st.Page(str(ROOT / "app" / "views" / "cap_tuning.py"), title="Cap tuning", url_path="cap-tuning"),
    st.Page(str(ROOT / "app" / "views" / "traits.py"), title="Traits", url_path="traits"),
]
st.navigation(pages).run()
