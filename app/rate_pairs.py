"""The Cap tuning page's "Rate pairs" section: one blinded pair at a time, the rating stored on a click.

Nothing here shows which side of a pair was capped; the key is read only for the aggregate summary, once a pair is
rated. Report examples that quote a pair's prompt or replies are hidden until every pair is rated (their labels
would unblind it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from backend.errors import PersonaSpaceError
from backend.view.pairs import add_rating, rating_summary, read_key, read_pairs, read_ratings

ERROR_KEY = "rate_pairs_error"
BUTTONS = (("a", "rate_a", "A is more like the Assistant"), ("b", "rate_b", "B is more like the Assistant"),
           ("tie", "rate_tie", "Can't tell"))  # fmt: skip


def _rate(folder: Path, pair: str, choice: str) -> None:
    try:
        add_rating(folder, pair, choice)
    except (PersonaSpaceError, OSError) as e:
        st.session_state[ERROR_KEY] = str(e)


def pending_texts(folder: Path) -> set[str]:
    """Prompts and replies of the pairs in ``folder`` while some are unrated (empty once all are, or with none)."""
    doc = read_pairs(folder)
    if not doc:
        return set()
    ratings = read_ratings(folder)
    pairs = [p for p in doc["pairs"] if isinstance(p, dict)]
    if all(p.get("pair") in ratings for p in pairs):
        return set()
    return {str(p.get(k)) for p in pairs for k in ("prompt", "a", "b") if p.get(k)}


def blinds(example: dict[str, Any], texts: set[str]) -> bool:
    """Whether showing ``example`` (a report example, labelled capped/uncapped) could unblind a pair."""
    return any(str(example.get(k)) in texts for k in ("prompt", "uncapped", "capped"))


def summary_line(summary: dict[str, Any]) -> str:
    share, ci = summary["capped_preferred"], summary["ci"]
    interval = f" (95% CI {ci[0]:.0%}–{ci[1]:.0%})" if ci else ""
    return f"The capped reply was preferred in **{share:.0%}**{interval} of {summary['rated']} rated pairs (a tie counts half)."


def show(folder: Path) -> None:
    """Draw the section for the report in ``folder``."""
    doc = read_pairs(folder)
    if not doc:
        st.caption(
            "No blinded pairs for this report. Make them with `python -m backend evaluate-cap … --export-pairs pairs.csv`."
        )
        return
    st.subheader("Rate pairs (blinded)")
    st.markdown("Which reply sounds more like the Assistant? The page does not say which was capped.")
    if ERROR_KEY in st.session_state:
        st.error(st.session_state.pop(ERROR_KEY))
    pairs = [p for p in doc["pairs"] if isinstance(p, dict) and isinstance(p.get("pair"), str)]
    ratings = read_ratings(folder)
    done = sum(1 for p in pairs if p["pair"] in ratings)
    st.caption(f"{done} of {len(pairs)} rated")
    todo = next((p for p in pairs if p["pair"] not in ratings), None)
    if todo is None:
        st.success(f"Every pair is rated ({len(pairs)}).")
    else:
        st.markdown(f"**Pair {todo['pair']}**")
        if todo.get("system"):
            st.markdown("**System prompt**")
            st.text(str(todo["system"]))
        st.markdown("**Prompt**")
        st.text(str(todo.get("prompt", "")))
        left, right = st.columns(2)
        left.markdown("**Reply A**")
        left.text(str(todo.get("a", "")))
        right.markdown("**Reply B**")
        right.text(str(todo.get("b", "")))
        cols = st.columns(len(BUTTONS))
        for col, (choice, button_key, label) in zip(cols, BUTTONS, strict=True):
            col.button(label, key=button_key, on_click=_rate, args=(folder, todo["pair"], choice))
    if done:
        with st.expander("Summary (unblinded)"):
            unblind = read_key(folder)
            if unblind is None:
                st.caption(f"No readable pairs-key.json in {folder}: the ratings cannot be unblinded.")
                return
            summary = rating_summary(unblind, ratings)
            if summary["rated"]:
                st.markdown(summary_line(summary))
            st.caption(
                f"capped preferred {summary['capped_preferred_count']} · uncapped preferred "
                f"{summary['uncapped_preferred_count']} · can't tell {summary['ties']}"
            )
            st.json(summary)
