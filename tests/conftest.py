from __future__ import annotations

import os

import pytest

# Tests never reach a model hub: everything comes from packages or is built from a config.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests.tiny import ARCHITECTURES, tiny_model


@pytest.fixture(scope="session", params=ARCHITECTURES)
def arch_model(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    return request.param, tiny_model(request.param)


@pytest.fixture(scope="session")
def llama():  # type: ignore[no-untyped-def]
    return tiny_model("llama")


@pytest.fixture(scope="session")
def smollm():  # type: ignore[no-untyped-def]
    """The real embedded default model (converted once into the user's cache)."""
    from backend.models import load_model

    return load_model("smollm2-135m")
