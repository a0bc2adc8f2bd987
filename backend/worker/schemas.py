"""Request and response bodies of the worker's HTTP API (validated by pydantic: finite numbers, bounded sizes)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

MAX_MESSAGE_CHARS = 8000
MAX_SYSTEM_CHARS = 4000
MAX_NEW_TOKENS = 1024
MAX_TITLE_CHARS = 200
MAX_TRAIT_CHARS = 64  # a trait's name (snake_case, as in the catalogue)
MAX_THRESHOLD = 1e9  # |cap_threshold|: far beyond any projection, small enough to stay finite in float32
# Sampling divides float32 logits by the temperature, then keeps the tokens whose preceding mass is below top_p, in
# float32 (backend.maths.sampling). A temperature of 1e-38 sends logits to inf (softmax then gives NaN, and every
# turn fails); a top_p of 1e-300 is 0 in float32 and keeps no token (0/0). From 0.01, logits up to 3e36 stay finite
# (and sampling is all but greedy there); from 1e-3, top_p always keeps the top token.
MIN_TEMPERATURE = 0.01
MIN_TOP_P = 1e-3


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Controls(Strict):
    """Per-session generation controls. Layer windows are half-open ``[start, stop)``."""

    cap_enabled: StrictBool = False
    cap_percentile: float | None = Field(75.0, ge=0, le=100, description="threshold as a percentile of the space's pool")
    cap_threshold: float | None = Field(
        None,
        ge=-MAX_THRESHOLD,
        le=MAX_THRESHOLD,
        description="absolute threshold at every capped layer (overrides the percentile)",
    )
    cap_layers: tuple[int, int] | None = Field(None, description="[start, stop); default: the space's cap window")
    steer_coefficient: float = Field(0.0, ge=-4, le=4, description="multiples of the layer's mean activation norm")
    steer_layers: tuple[int, int] | None = Field(None, description="[start, stop); default: the target layer only")
    steer_trait: str | None = Field(
        None, min_length=1, max_length=MAX_TRAIT_CHARS,
        description="steer along this trait's vector (+ toward expressing it); None: along the Assistant Axis",
    )  # fmt: skip
    temperature: float = Field(0.7, ge=MIN_TEMPERATURE, le=2)
    top_p: float = Field(0.9, ge=MIN_TOP_P, le=1)
    greedy: StrictBool = True
    seed: int = Field(0, ge=0, le=2**31 - 1)
    max_new_tokens: int = Field(160, ge=1, le=MAX_NEW_TOKENS)
    repetition_penalty: float = Field(
        1.15, ge=1, le=2, description="divide the logits of tokens already in this reply (1 = off), greedy included"
    )

    @model_validator(mode="after")
    def _windows(self) -> Controls:
        for name in ("cap_layers", "steer_layers"):
            window = getattr(self, name)
            if window is not None and not (0 <= window[0] < window[1]):
                raise ValueError(f"{name} must be [start, stop) with 0 <= start < stop, got {list(window)}")
        return self


class WindowError(ValueError):
    """A layer window that reaches past the loaded model."""


def fit_controls(controls: Controls, n_layers: int, cap_window: tuple[int, int]) -> Controls:
    """``controls`` checked against a model with ``n_layers`` layers; an unset cap window becomes ``cap_window``.

    Raises ``WindowError`` naming the window and the model's layers."""
    for name in ("cap_layers", "steer_layers"):
        window = getattr(controls, name)
        if window is not None and window[1] > n_layers:
            raise WindowError(f"{name} {list(window)} reaches past the model's {n_layers} layers (0..{n_layers - 1})")
    if controls.cap_layers is None:
        controls = controls.model_copy(update={"cap_layers": (int(cap_window[0]), int(cap_window[1]))})
    return controls


class ControlsPatch(Strict):
    """A partial change of controls: only the fields given change."""

    cap_enabled: StrictBool | None = None
    cap_percentile: float | None = Field(None, ge=0, le=100)
    cap_threshold: float | None = Field(None, ge=-MAX_THRESHOLD, le=MAX_THRESHOLD)
    clear_cap_threshold: StrictBool = False
    cap_layers: tuple[int, int] | None = None
    steer_coefficient: float | None = Field(None, ge=-4, le=4)
    steer_layers: tuple[int, int] | None = None
    steer_trait: str | None = Field(None, min_length=1, max_length=MAX_TRAIT_CHARS)
    clear_steer_trait: StrictBool = False  # steer along the Assistant Axis again
    temperature: float | None = Field(None, ge=MIN_TEMPERATURE, le=2)
    top_p: float | None = Field(None, ge=MIN_TOP_P, le=1)
    greedy: StrictBool | None = None
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    max_new_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS)
    repetition_penalty: float | None = Field(None, ge=1, le=2)


class NewSession(Strict):
    system: str | None = Field(None, max_length=MAX_SYSTEM_CHARS)
    title: str | None = Field(None, max_length=MAX_TITLE_CHARS)
    controls: Controls | None = None


class NewMessage(Strict):
    content: str = Field(..., min_length=1, max_length=MAX_MESSAGE_CHARS)
    compare: StrictBool = Field(False, description="generate the reply twice, capped and uncapped, with the same seed")


class Problem(BaseModel):
    error: str
    detail: Any = None


class MessageAccepted(BaseModel):
    user_turn: int
    assistant_turns: list[int]
    variants: list[Literal["single", "capped", "uncapped"]]
    queue_position: int
