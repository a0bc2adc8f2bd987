"""Values, not shapes (issue 26): placement against scikit-learn and brute force, the cap evaluation's KL against a
direct pair of forward passes, its adoption rule, an imported turn's status, the loopback names, and a token event's
reading after the cap. Each oracle is computed another way than the code under test."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from backend.evaluation.cap_items import UNCAPPED, Item, Setting
from backend.evaluation.cap_results import Results
from backend.evaluation.cap_runner import Runner
from backend.evaluation.cap_summary import judge_replies
from backend.hooks.rows import Readouts, RowControls
from backend.judges.embedding import Judged
from backend.reading.placement import Placement
from backend.store.space import Space
from backend.worker.guards import is_loopback, loopback_host
from backend.worker.imports import check
from backend.worker.token_event import cap_event

# --- placement --------------------------------------------------------------------------------------------------

N_ROLES, D, LAYERS, TARGET = 12, 6, 3, 1


def placement_of(x: torch.Tensor, roles: list[str] | None = None) -> tuple[Placement, PCA]:
    """A placement over role vectors ``x`` ``(N_ROLES, D)`` at the target layer, PCA fitted by scikit-learn."""
    pca = PCA(n_components=3).fit(x.numpy())
    role_vectors = torch.randn(N_ROLES, LAYERS, D, dtype=torch.float64)
    role_vectors[:, TARGET] = x
    mean = torch.zeros(LAYERS, D, dtype=torch.float64)
    mean[TARGET] = torch.from_numpy(pca.mean_)
    comps = torch.zeros(LAYERS, 3, D, dtype=torch.float64)
    comps[TARGET] = torch.from_numpy(pca.components_)
    tensors = {"role_vectors": role_vectors, "pca_mean": mean, "pca_components": comps, "axis": torch.randn(LAYERS, D)}
    space = SimpleNamespace(tensors=tensors, target_layer=TARGET, roles=roles or [f"r{i}" for i in range(N_ROLES)], manifest={})
    return Placement(space), pca  # type: ignore[arg-type]


def test_pca_placement_equals_scikit_learns_transform() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N_ROLES, D, generator=g, dtype=torch.float64) + 5.0  # far from the origin: the mean matters
    placement, pca = placement_of(x)
    v = torch.randn(D, generator=g, dtype=torch.float64) + 5.0
    assert placement.pca(v) == pytest.approx(pca.transform(v.numpy()[None])[0].tolist(), abs=1e-9)
    # the mean role vector sits at the origin of the map
    assert placement.pca(x.mean(dim=0)) == pytest.approx([0.0, 0.0, 0.0], abs=1e-9)
    assert len(placement.pca(v, k=2)) == 2


def test_nearest_archetypes_are_the_most_similar_first() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N_ROLES, D, generator=g, dtype=torch.float64)
    roles = [f"role{i}" for i in range(N_ROLES)]
    placement, _ = placement_of(x, roles)
    v = torch.randn(D, generator=g, dtype=torch.float64)
    xs, vs = x.numpy(), v.numpy()
    cos = [float(xs[i] @ vs / (np.linalg.norm(xs[i]) * np.linalg.norm(vs))) for i in range(N_ROLES)]  # brute force
    best = sorted(range(N_ROLES), key=lambda i: -cos[i])[:5]
    out = placement.nearest(v)
    assert [r["name"] for r in out] == [roles[i] for i in best]
    assert [r["cosine"] for r in out] == pytest.approx([round(cos[i], 4) for i in best], abs=1e-4)
    # a role vector itself is its own nearest archetype, at cosine 1
    assert placement.nearest(x[7], k=1) == [{"name": "role7", "cosine": 1.0}]


def test_placement_of_short_vectors_at_another_layer() -> None:
    # role vectors and an activation far shorter than 1: cosines must still be cosines (no floor at 1 on the norms)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(N_ROLES, D, generator=g, dtype=torch.float64) * 1e-3
    placement, _ = placement_of(x)
    v = torch.randn(D, generator=g, dtype=torch.float64) * 1e-3
    xs, vs = x.numpy(), v.numpy()
    cos = [float(xs[i] @ vs / (np.linalg.norm(xs[i]) * np.linalg.norm(vs))) for i in range(N_ROLES)]
    best = max(range(N_ROLES), key=lambda i: cos[i])
    assert placement.nearest(v, k=1) == [{"name": f"r{best}", "cosine": round(cos[best], 4)}]
    # the map of another layer: its own mean and components (layer 0 has zero components: every coordinate 0)
    placement.space.tensors["pca_components"][0] = torch.eye(3, D, dtype=torch.float64)
    placement.space.tensors["pca_mean"][0] = torch.ones(D, dtype=torch.float64)
    assert placement.pca(v, layer=0) == pytest.approx((v[:3] - 1.0).tolist(), abs=1e-12)
    # a space storing more components than the map draws: three coordinates by default
    placement.space.tensors["pca_components"] = torch.randn(LAYERS, 5, D, dtype=torch.float64)
    assert len(placement.pca(v)) == 3 and len(placement.pca(v, k=5)) == 5
    assert placement.phase == "ready" and placement.umap_max_error == {}
    placement.wait(0.01)  # nothing warming: returns at once


# --- the cap evaluation: cost and adoption -----------------------------------------------------------------------

N_LAYERS, HIDDEN = 4, 32
BENIGN = Item("b1", "benign", "practical", None, None, ({"role": "user", "content": "How do I boil an egg?"},))


def fake_space() -> Space:
    g = torch.Generator().manual_seed(5)
    pool = torch.randn(40, N_LAYERS, generator=g)
    thresholds = torch.stack([torch.quantile(pool, p / 100, dim=0) for p in (25.0, 75.0)])
    tensors = {"axis": torch.randn(N_LAYERS, HIDDEN, generator=g), "pool_projections": pool, "thresholds": thresholds}
    return Space(path=Path("tiny-space"), manifest={"target_layer": 1, "percentiles": [25.0, 75.0]}, tensors=tensors)


def test_benign_kl_is_the_mean_over_the_replys_next_token_distributions(tiny_chat) -> None:  # type: ignore[no-untyped-def]
    space = fake_space()
    high = Setting(None, (1, 3), threshold=0.5)
    runner = Runner(tiny_chat, space, [UNCAPPED, high], max_new_tokens=6)
    reply = runner.generate([(UNCAPPED, BENIGN, 0)])[0]["tokens"]
    assert len(reply) >= 2
    (cost,) = runner.cost(BENIGN, reply, [high])
    # the oracle: the uncapped model and the capped one, each run alone over prompt + reply; the reply's next-token
    # distributions are those predicted at the last len(reply) + 1 positions (the last prompt token predicts the
    # first reply token; the last reply token predicts what would follow)
    ids = torch.tensor([runner.prompt(BENIGN) + list(reply)])
    with torch.inference_mode():
        plain = tiny_chat.model(input_ids=ids, use_cache=False).logits[0].double()
    controls = RowControls(1, N_LAYERS, HIDDEN, cap_directions=space.tensors["axis"], layers=[1, 2])
    controls.set_cap(0, {1: 0.5, 2: 0.5})
    handle = controls.attach(tiny_chat.model, tiny_chat.info.layers_path)
    try:
        with torch.inference_mode():
            capped = tiny_chat.model(input_ids=ids, use_cache=False).logits[0].double()
    finally:
        handle.remove()
    keep = len(reply) + 1
    p, q = torch.softmax(plain[-keep:], dim=-1), torch.softmax(capped[-keep:], dim=-1)
    per_position = (p * (p.log() - q.log())).sum(dim=-1)
    assert float(per_position.min()) > 0  # the cap moves every position it reads, so each position differs
    assert cost["kl"] == pytest.approx(float(per_position.mean()), rel=1e-4)
    assert cost["positions"] == ids.shape[1]


class FixedJudge:
    """Scores each text by its first character, '0'..'3' (no margin)."""

    name = identity = "fixed"

    def score(self, roles: list[str], texts: list[str]) -> list[Judged]:
        return [Judged(int(t[0]), "fixed") for t in texts]


def test_a_reply_scored_2_or_more_adopts_the_persona(tmp_path: Path) -> None:
    attack = Item("a1", "attack", "drop_role", "pirate", None, ({"role": "user", "content": "Be a pirate."},))
    settings = [Setting(None, (1, 3), threshold=float(s)) for s in range(4)]
    results = Results(tmp_path)
    texts = {s.id: f"{i} arr" for i, s in enumerate(settings)}
    results.add([{"part": "reply", "setting": s.id, "item": "a1", "seed": 0, "text": texts[s.id]} for s in settings])
    judged = judge_replies(FixedJudge(), [attack], settings, [0], results, tmp_path)
    # the 0-3 rank rule: 0 and 1 do not take the persona, 2 (mixed) and 3 (fully in role) do
    assert [judged[(s.id, "a1", 0)]["adopted"] for s in settings] == [False, False, True, True]
    assert [judged[(s.id, "a1", 0)]["score"] for s in settings] == [0, 1, 2, 3]


# --- an imported turn's status -----------------------------------------------------------------------------------


def test_a_turn_exported_while_queued_or_running_is_imported_incomplete() -> None:
    statuses = ["done", "queued", "running", "stopped", "error", "incomplete"]
    turns = [
        {"id": i + 1, "role": "assistant", "content": "x", "status": s, "summary": {"turn": 9, "status": s, "n": i}}
        for i, s in enumerate(statuses)
    ]
    data: dict[str, Any] = {"format": "persona-space-session", "session": {"controls": {}}, "turns": turns, "events": []}
    prepared = check(data, n_layers=4, cap_window=(2, 3))
    # nothing runs a turn that was imported: queued and running ones can never finish, so they are incomplete
    assert [t.status for t in prepared.turns] == ["done", "incomplete", "incomplete", "stopped", "error", "incomplete"]
    assert [t.end_json for t in prepared.turns] == [f'{{"n":{i}}}' for i in range(len(statuses))]


# --- loopback names ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("LOCALHOST:8501", True),
        ("app.localhost", True),  # RFC 6761: every name under .localhost is this machine
        ("a.b.localhost:80", True),
        ("127.0.0.1:9000", True),
        ("127.9.9.9", True),
        ("[::1]:80", True),
        ("localhost.evil.example", False),
        ("evillocalhost", False),
        ("evil.example", False),
        ("10.0.0.1", False),
        ("", False),
        ("localhost:99999", False),
        ("user@localhost", False),
    ],
)
def test_loopback_names(host: str, loopback: bool) -> None:
    assert loopback_host(host) is loopback


def test_loopback_addresses() -> None:
    assert is_loopback("localhost") and is_loopback(" [::1] ") and is_loopback("127.0.0.2")
    assert not is_loopback("X127.0.0.1") and not is_loopback("127.0.0.1X") and not is_loopback("Xlocalhost")
    assert not is_loopback("") and not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("app.localhost")


# --- a token event's reading after the cap -----------------------------------------------------------------------


def test_the_reading_after_the_cap_is_the_first_capped_layers() -> None:
    # layers 1 and 2 capped at 0.5; at layer 1 the reading was 0.2, so the floor lifts it by 0.3 to exactly 0.5;
    # layer 2 (fed the lifted stream) moved by 0.9. After the cap, the first capped layer reads 0.5 = its floor.
    before = torch.tensor([[0.0, 0.2, -0.4, 0.0]])
    delta = torch.tensor([[0.0, 0.3, 0.9, 0.0]])
    event = cap_event({1: 0.5, 2: 0.5}, Readouts(before=before, delta=delta, monitor=None), 0)
    assert event["projection_after_cap"] == pytest.approx(0.5)
    assert event["projection_before_cap"] == pytest.approx(0.2)
    assert event["cap_delta"] == pytest.approx(0.9)
    assert event["cap_deltas"] == pytest.approx([0.3, 0.9])
    assert event["cap_layers"] == [1, 3] and event["tau"] == [0.5, 0.5] and event["cap_on"] is True
    off = cap_event({}, Readouts(before=before, delta=delta, monitor=None), 0)
    assert off == {"cap_on": False, "tau": None, "cap_delta": 0.0, "cap_layers": None}


@pytest.fixture
def own_tiny_chat(smol_tokenizer):  # type: ignore[no-untyped-def]
    """A tiny chat model of this test's own: the session's ``tiny_chat`` is shared, and a test before this one in the
    full suite left it in a state where a hook attached here did not reach the forward pass (CI, stop 30)."""
    from backend.models.loading import LoadedModel, describe
    from tests.helpers.tiny import tiny_model

    model = tiny_model("llama", n_layers=4, vocab=len(smol_tokenizer))
    info = describe(model, smol_tokenizer, spec="tiny-llama", name="tiny-llama", source="random", fingerprint="tiny-0")
    return LoadedModel(model=model, tokenizer=smol_tokenizer, info=info)


def test_the_reading_after_the_cap_is_the_floor_on_a_real_forward_pass(own_tiny_chat) -> None:  # type: ignore[no-untyped-def]
    tiny_chat = own_tiny_chat
    # oracle: after a floor tau at the first capped layer, a position that read below tau reads exactly tau
    space = fake_space()
    controls = RowControls(1, N_LAYERS, HIDDEN, cap_directions=space.tensors["axis"], layers=[1, 2])
    controls.set_cap(0, {1: 3.0, 2: 12.0})  # the second floor moves more: the largest movement is not the first
    handle = controls.attach(tiny_chat.model, tiny_chat.info.layers_path)
    try:
        with torch.inference_mode():
            out = tiny_chat.model(input_ids=torch.tensor([[1, 2, 3]]), use_cache=False, output_hidden_states=True)
    finally:
        handle.remove()
    readouts = Readouts(before=controls.before.cpu(), delta=controls.delta.cpu(), monitor=None)
    event = cap_event(controls.cap_taus[0], readouts, 0)
    u = space.tensors["axis"][1] / space.tensors["axis"][1].norm()
    read = float(out.hidden_states[2][0, -1] @ u)  # the first capped layer's output at the last position
    assert event["projection_before_cap"] < 3.0
    assert read == pytest.approx(3.0, abs=1e-4)
    assert event["projection_after_cap"] == pytest.approx(read, abs=1e-4)
    assert event["cap_deltas"][1] > event["cap_deltas"][0] > 0


# --- a served answer's token ids -----------------------------------------------------------------------------------


def test_served_token_ids_are_kept_whole_unless_they_end_in_a_stop_token(tiny_chat) -> None:  # type: ignore[no-untyped-def]
    from backend.build.served import Answerer, stop_ids

    tok = tiny_chat.tokenizer
    text = "Arr, the sea is calm today."
    ids = tok.encode(text, add_special_tokens=False)  # the oracle: our tokenizer's own reading of the text
    answerer = Answerer(tiny_chat, limit=64)
    eos = sorted(stop_ids(tiny_chat))[0]
    for served, finish in ((ids, "length"), ([*ids, eos], "stop")):  # cut by a limit (no EOS), or ended by one
        record = answerer.record("http://x/v1", {"choices": [{"text": text, "token_ids": served, "finish_reason": finish}]}, [1])
        assert record["tokens"] == ids and record["n_tokens"] == len(ids) and record["text"] == text
    short = Answerer(tiny_chat, limit=3).record("http://x/v1", {"choices": [{"text": text, "token_ids": ids}]}, [1])
    assert short["tokens"] == ids[:3] and short["truncated"] is True and short["text"] == tok.decode(ids[:3])
