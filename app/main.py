"""Persona Space: the Streamlit entry point (`streamlit run app/main.py`)."""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # pages import `app` and `backend` from the repository root
    sys.path.insert(0, str(ROOT))

# Emoji icons: the browser draws them itself. (A ":material/...:" page icon makes the favicon a request to
# fonts.gstatic.com, and nothing may leave the machine.)
st.set_page_config(page_title="Persona Space", page_icon="🧭", layout="wide")
pages = [
    st.Page(str(ROOT / "app" / "views" / "space.py"), title="Persona space", icon="🧭", default=True),
    st.Page(str(ROOT / "app" / "views" / "chat.py"), title="Live chat", icon="💬", url_path="chat"),
    st.Page(str(ROOT / "app" / "views" / "transcripts.py"), title="Transcripts", icon="📄", url_path="transcripts"),
    st.Page(str(ROOT / "app" / "views" / "demo.py"), title="Demo", icon="🎬", url_path="demo"),
]
st.navigation(pages).run()
