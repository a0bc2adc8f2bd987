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
    from backend.models.loading import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def smol_tokenizer():  # type: ignore[no-untyped-def]
    """The embedded model's tokenizer (chat template included), without loading its weights."""
    from transformers import AutoTokenizer

    from backend.models.loading import cache_dir, resolve

    folder, _, _ = resolve("smollm2-135m", cache_dir())
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    return tokenizer


@pytest.fixture(scope="session")
def tiny_chat(smol_tokenizer):  # type: ignore[no-untyped-def]
    """A tiny random Llama with the embedded model's tokenizer: a chat model for plumbing tests."""
    from backend.models.loading import LoadedModel, describe
    from tests.tiny import tiny_model

    model = tiny_model("llama", n_layers=4, vocab=len(smol_tokenizer))
    model.generation_config.eos_token_id = smol_tokenizer.eos_token_id
    info = describe(model, smol_tokenizer, spec="tiny-llama", name="tiny-llama", source="random", fingerprint="tiny-0")
    return LoadedModel(model=model, tokenizer=smol_tokenizer, info=info)


WORLD_ROLES = ("pirate", "librarian", "ghost", "accountant", "poet", "chef")


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory, smol_tokenizer):  # type: ignore[no-untyped-def]
    """A tiny random Llama saved as a model folder, and a persona space built for it."""
    from backend.build.pipeline import build
    from backend.build.settings import BuildSettings
    from backend.catalogue import load_catalogue
    from backend.models.loading import load_model
    from tests.tiny import tiny_model

    root = tmp_path_factory.mktemp("tiny_world")
    model = tiny_model("llama", n_layers=4, vocab=len(smol_tokenizer))
    model.generation_config.eos_token_id = smol_tokenizer.eos_token_id
    model.save_pretrained(root / "model")
    smol_tokenizer.save_pretrained(root / "model")
    loaded = load_model(str(root / "model"))
    settings = BuildSettings(
        prompts_per_role=1, questions_per_role=2, default_questions=2, max_new_tokens=4, batch_size=16,
        judge="none", min_in_role=1, roles=WORLD_ROLES, umap_neighbors=3,
    )  # fmt: skip
    space = build(loaded, load_catalogue(), settings, root / "space", root / "work", log=lambda m: None)
    return str(root / "model"), space, root


@pytest.fixture(scope="session")
def worker(tiny_world):  # type: ignore[no-untyped-def]
    """A real worker process serving the tiny model and its space."""
    from tests.worker_harness import Worker

    model, space, root = tiny_world
    w = Worker(model, space, root / "worker.sqlite3")
    w.wait_ready()
    yield w
    w.close()
