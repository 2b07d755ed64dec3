import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import next_item_loss, sequences_of

from ltrec.models import BACKBONES, BERT4Rec, SASRec, base, bert4rec, loss_from_states
from ltrec.models.base import Dropout
from ltrec.models.neighbours import check_table
from ltrec.recipe import BACKBONE_KINDS, Backbone
from ltrec.recipe.backbones import FITTED_KINDS

N, MAX_LEN, DIM = 20, 12, 16
# every trained backbone (a user state), new ones included, and SASRec's variants
NEURAL = (*(k for k, c in BACKBONES.items() if c.trainable), "sasrec-legacy", "sasrec-unscaled", "sasrec-relative")
# fitted item-to-item tables (no user state, no training loop): their scores are what is checked
FITTED = tuple(k for k, c in BACKBONES.items() if not c.trainable and k != "pop")
# what the fitted ones are fitted on: 40 users walking mostly item → item + 1 over items 1..N, repeats included
_rng = np.random.default_rng(0)
FIT_LOG = [
    [int(i) for i in (_rng.integers(0, N) + np.cumsum(_rng.random(n) < 0.8)) % N + 1]
    for n in _rng.integers(2, 12, size=40)
]


def make(name, **kw):
    torch.manual_seed(0)
    if name in FITTED:  # fitted on a small log; EASE with a small penalty, so its weights are far from 0
        kw = {"l2": 1.0, **kw} if name == "ease" else kw
        return BACKBONES[name](N, MAX_LEN, **kw).fit(sequences_of(FIT_LOG, N)).eval()
    if name == "sasrec-legacy":  # runs saved before input_norm existed
        name, kw = "sasrec", {"input_norm": False, **kw}
    if name == "sasrec-unscaled":  # backbone.item_scale: false
        name, kw = "sasrec", {"item_scale": False, **kw}
    if name == "sasrec-relative":  # backbone.positions: relative
        name, kw = "sasrec", {"positions": "relative", **kw}
    kw = {"dim": DIM, **kw}
    if name in ("gru4rec", "narm"):
        kw.setdefault("layers", 2)  # two layers also checks that zeros propagate between layers
    m = BACKBONES[name](N, MAX_LEN, **kw).eval()
    if getattr(m, "relative", False):  # trained biases, not the zero init, so the tests see them act
        with torch.no_grad():
            m.dist_bias.weight.normal_(0, 1.0)
    return m


def left_pad(seqs, L):
    out = torch.zeros(len(seqs), L, dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            out[i, L - len(s) :] = torch.tensor(s)
    return out


SEQS = [[3, 7, 1], [5], [2, 4, 6, 8, 10, 12, 14, 16], [9, 9, 20, 1, 1]]


@pytest.mark.parametrize("name", NEURAL + FITTED)
def test_padding_invariance(name):
    """The user state (a fitted model's: its scores, as it has no state) is the same whatever the left padding."""
    m = make(name)
    state = m.encode if m.trainable else m
    with torch.no_grad():
        short, long_ = state(left_pad(SEQS, 8)), state(left_pad(SEQS, 12))
        torch.testing.assert_close(short, long_, atol=1e-5, rtol=0)
        # each row alone (no batch-mates) gives the same state as in the mixed batch
        for i, s in enumerate(SEQS):
            torch.testing.assert_close(state(left_pad([s], len(s)))[0], short[i], atol=1e-5, rtol=0)
    if not m.trainable:  # every row scored (a table with nothing in it would pass the check above)
        assert (short > 1e-3).any(dim=1).all()


@pytest.mark.parametrize("name", ["sasrec", "sasrec-legacy", "caser", "narm"])
def test_causal(name):
    """Per-position states (what the next-item loss trains) never see later items."""
    m = make(name)
    x = left_pad([[1, 2, 3, 4, 5, 6]], 8)
    y = x.clone()
    t = 5
    y[0, t] = 17
    with torch.no_grad():
        a, b = m.encode_all(x), m.encode_all(y)
    torch.testing.assert_close(a[:, :t], b[:, :t], atol=1e-6, rtol=0)
    assert not torch.allclose(a[:, t:], b[:, t:])


@pytest.mark.parametrize("name", NEURAL)
def test_shapes_and_forward(name):
    m = make(name)
    x = left_pad(SEQS, 8)
    with torch.no_grad():
        assert m.encode_all(x).shape == (4, 8, DIM)
        assert m.encode(x).shape == (4, DIM)
        out = m(x)
        assert out.shape == (4, N)
        torch.testing.assert_close(out, m.score(m.encode(x)))
        # column j is item j+1 (tied embeddings)
        h = m.encode(x)
        torch.testing.assert_close(out[:, 4], h @ m.item_emb.weight[5])
    assert m.dim == DIM


@pytest.mark.parametrize("name", FITTED)
def test_fitted_shapes_and_forward(name):
    """A fitted model: (B, N) scores from its table, no parameters, no user state, a table that passes the
    checkpoint checks; an all-padding row scores 0 everywhere (nothing in the history, nothing summed)."""
    m = make(name)
    assert list(m.parameters()) == [] and not m.trainable and not m.tied and m.dim == 1
    check_table(m.ids, m.strength, N)
    assert m.ids.shape[0] == N + 1 and m.ids.shape[1] <= N
    x = left_pad([*SEQS, []], 8)
    with torch.no_grad():
        out = m(x)
        assert out.shape == (5, N) and torch.isfinite(out).all()
        assert m.encode(x).shape == (5, 1)
        assert torch.equal(out[4], torch.zeros(N))
        assert len({tuple(row.tolist()) for row in out[:4]}) == 4  # the history matters


@pytest.mark.parametrize("name", FITTED)
def test_fitted_state_dict_loads_into_an_unfitted_model(name):
    """What eval and export do: a fresh model (a 1-wide placeholder table) takes the fitted table's width from
    the checkpoint and scores exactly as the fitted one."""
    fitted = make(name)
    fresh = BACKBONES[name](N, MAX_LEN).eval()
    assert fresh.ids.shape == (N + 1, 1)
    fresh.load_state_dict(fitted.state_dict())
    x = left_pad(SEQS, 8)
    with torch.no_grad():
        assert torch.equal(fresh(x), fitted(x))
    assert fresh.ids.dtype == torch.int32 and fresh.ids.shape == fitted.ids.shape


@pytest.mark.parametrize("name", NEURAL)
def test_all_padding_row_no_nan(name):
    m = make(name)
    x = left_pad([[], [1, 2]], 6)
    with torch.no_grad():
        assert torch.isfinite(m.encode_all(x)).all()
        assert torch.isfinite(m(x)).all()
    m.train()
    loss, _ = m.training_loss(x, left_pad([[], [2, 3]], 6))
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_ce_matches_hand_computation_and_ignores_pads():
    m = make("sasrec")
    inputs = left_pad([[1, 2, 3], [4, 5]], 4)
    targets = left_pad([[2, 3, 4], [5, 6]], 4)
    with torch.no_grad():
        states = m.encode_all(inputs)
        logits = m.score(states)  # (B, L, N)
        mask = targets > 0
        expected = F.cross_entropy(logits[mask], targets[mask] - 1)
        torch.testing.assert_close(next_item_loss(m, inputs, targets), expected)
        # only one target: states at every other position must not matter
        one = torch.zeros_like(targets)
        one[0, 3] = 4
        noisy = states + 100 * torch.randn_like(states) * (one == 0).unsqueeze(-1)
        want = F.cross_entropy(logits[0, 3:4], torch.tensor([3]))
        torch.testing.assert_close(loss_from_states(m, noisy, one), want)
        torch.testing.assert_close(loss_from_states(m, states, one), want)
        # no targets at all: 0, not NaN
        assert loss_from_states(m, states, torch.zeros_like(targets)).item() == 0.0


@pytest.mark.parametrize("name", NEURAL)
@pytest.mark.parametrize("loss", ["ce", "bce", "sampled"])
def test_losses_overfit(name, loss):
    m = make(name, dropout=0.0).train()
    seqs = [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10], [11, 12, 13, 14, 15, 16, 17]]
    inputs = left_pad([s[:-1] for s in seqs], 8)
    targets = left_pad([s[1:] for s in seqs], 8)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        value, _ = m.training_loss(inputs, targets, loss=loss, negatives=5, generator=g)  # next-item but BERT4Rec
        assert torch.isfinite(value)
        value.backward()
        opt.step()
        losses.append(value.item())
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


def test_unknown_loss():
    m = make("gru4rec")
    x = left_pad([[1, 2]], 3)
    with pytest.raises(ValueError):
        next_item_loss(m, x, x, loss="nope")


def test_heads_must_divide_dim():
    with pytest.raises(ValueError):
        SASRec(N, MAX_LEN, dim=10, heads=3)


def test_pop():
    m = BACKBONES["pop"](N, MAX_LEN)
    assert list(m.parameters()) == []
    counts = torch.arange(N, dtype=torch.float)
    m.fit(SimpleNamespace(item_counts=lambda: counts.numpy()))
    for b in (1, 5):
        out = m(left_pad([[1, 2]] * b, 4))
        assert out.shape == (b, N)
        torch.testing.assert_close(out, torch.log1p(counts).expand(b, N))  # the order of the counts, on a log scale


@pytest.mark.parametrize("positions", ["newest", "relative"])
def test_relative_positions_encode_a_short_history_as_the_start_of_a_long_one(positions):
    """With positions: relative a state depends only on the items before it and their distances: a 3-item
    history (left-padded) ends in the same state as the third position of a full window that starts with it.
    Counted from the newest, the same items sit at other positions and the states differ."""
    m = make("sasrec-relative" if positions == "relative" else "sasrec")
    long = torch.tensor([[3, 7, 5, 9, 2, 11, 4, 6, 8, 1, 12, 10]])  # MAX_LEN items
    with torch.no_grad():
        inside = m.encode_all(long)[0, 2]  # (D,) after 3, 7, 5
        short = m.encode(left_pad([[3, 7, 5]], MAX_LEN))[0]  # (D,)
    assert torch.allclose(inside, short, atol=1e-5) == (positions == "relative")


@pytest.mark.parametrize("name", NEURAL + FITTED)
def test_onnx_export(name, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    m = make(name)
    example = left_pad(SEQS[:2], MAX_LEN)
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(
        m,
        (example,),
        str(path),
        dynamo=False,
        input_names=["history"],
        output_names=["scores"],
        dynamic_axes={"history": {0: "batch"}},
        opset_version=17,
    )
    other = left_pad(SEQS + [[], [4, 4, 4]], MAX_LEN)  # batch of 6, includes an all-pad row
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(["scores"], {"history": other.numpy()})
    with torch.no_grad():
        want = m(other).numpy()
    assert got.shape == (6, N)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_backbones_are_the_recipe_kinds():
    kinds = [c.model_fields["kind"].annotation.__args__[0] for c in Backbone.__origin__.__args__]
    assert list(BACKBONES) == kinds == list(BACKBONE_KINDS)  # the error messages list the kinds from there
    # the recipe (no torch) knows which kinds are fitted, to refuse the components that need a user state
    assert set(FITTED_KINDS) == {k for k, c in BACKBONES.items() if not c.trainable}


@pytest.mark.parametrize("name", [k for k in NEURAL if k != "bert4rec"])  # BERT4Rec's cloze: tested below
def test_default_objective_is_next_item(name):
    """Every backbone but BERT4Rec trains on the next-item loss at every position, bit for bit."""
    m = make(name)
    inputs, targets = left_pad([[1, 2, 3], [4, 5]], 4), left_pad([[2, 3, 4], [5, 6]], 4)
    with torch.no_grad():
        loss, states = m.training_loss(inputs, targets)
        assert torch.equal(loss, next_item_loss(m, inputs, targets))
        assert torch.equal(states, m.encode_all(inputs))


@pytest.mark.parametrize("name", ["caser", "narm", "sasrec", "sasrec-relative", "sasrec-legacy"])
def test_encode_is_the_last_position(name):
    """Caser, NARM and SASRec compute `encode` more cheaply than encode_all (SASRec: its last block makes only
    the newest position's state); the numbers must be the same, for an all-padding row too."""
    for layers in (1, 3) if name.startswith("sasrec") else (None,):
        m = make(name, **({"layers": layers} if layers else {}))
        with torch.no_grad():
            x = torch.cat([left_pad(SEQS, 10), torch.zeros(1, 10, dtype=torch.long)])
            torch.testing.assert_close(m.encode(x), m.encode_all(x)[:, -1], atol=1e-6, rtol=0)


def test_caser_sees_only_its_window():
    m = make("caser", window=3)
    x = left_pad([[1, 2, 3, 4, 5, 6]], 8)
    y = x.clone()
    y[0, 4] = 17  # the 4th newest item: outside the last position's window of 3
    with torch.no_grad():
        torch.testing.assert_close(m.encode(x), m.encode(y), atol=0, rtol=0)
        y[0, 5] = 17  # the 3rd newest: inside
        assert not torch.allclose(m.encode(x), m.encode(y))


def test_narm_pads_get_no_attention():
    """Whatever the pad positions' GRU outputs were, the state would not change: their weight is exactly 0."""
    m = make("narm")
    x = left_pad([[3, 7, 1]], 6)
    with torch.no_grad():
        h = m._hidden(x)
        noisy = h + 100 * torch.randn_like(h) * (x == 0).unsqueeze(-1)
        valid = (x > 0).unsqueeze(1)
        torch.testing.assert_close(m._attend(noisy, h[:, -1:], valid), m._attend(h, h[:, -1:], valid))


def capture_cloze(m, inputs, targets, seed=0):
    """Run BERT4Rec's training loss, returning (loss, the ids it encoded, the window it masked)."""
    seen = []
    real = bert4rec.encode_by_length
    bert4rec.encode_by_length = lambda encode_all, ids: seen.append(ids.clone()) or real(encode_all, ids)
    try:
        loss, state = m.training_loss(inputs, targets, generator=torch.Generator().manual_seed(seed))
    finally:
        bert4rec.encode_by_length = real
    seq = torch.cat([inputs, targets[:, -1:]], dim=1)[:, 1:]  # the window's newest L items
    return loss, state, seen[0], seq


def test_bert4rec_masking_hides_the_targets():
    m = make("bert4rec", mask_prob=0.4, last_only=0.0)
    seqs = [[1, 2, 3, 4, 5, 6, 7, 8, 9], [7, 8, 9, 10], [11, 12], [5, 6, 7, 8, 9, 10, 11, 12, 13]]
    inputs, targets = left_pad([s[:-1] for s in seqs], 8), left_pad([s[1:] for s in seqs], 8)
    with torch.no_grad():
        loss, state, ids, seq = capture_cloze(m, inputs, targets)
        masked = ids == m.mask_id
        assert masked.any(dim=1).all()  # every window has a target
        assert torch.equal(ids[~masked], seq[~masked])  # unmasked items are left alone
        assert (seq[masked] > 0).all()  # pads are never masked
        # the loss is CE over the N items (never the mask token) at the masked positions only
        states = m.encode_all(ids)
        logits = m.score(states)  # (B, L, N): N columns, the mask id N+1 has none
        assert logits.shape[-1] == N and m.item_emb.num_embeddings == N + 1
        torch.testing.assert_close(loss, F.cross_entropy(logits[masked], seq[masked] - 1))
        torch.testing.assert_close(state[ids > 0], states[ids > 0])  # pads' states: see encode_by_length
        # the hidden items themselves cannot change the loss: only their positions do
        other = seq.masked_fill(masked, 17)
        inputs2, targets2 = torch.cat([inputs[:, :1], other[:, :-1]], 1), targets.clone()
        targets2[:, -1] = other[:, -1]
        _, _, ids2, _ = capture_cloze(m, inputs2, targets2)
        assert torch.equal(ids2, ids)
        # last_only = 1: only the newest item is masked, as at inference
        m.last_only = 1.0
        _, _, ids, _ = capture_cloze(m, inputs, targets)
        assert (ids[:, -1] == m.mask_id).all() and not (ids[:, :-1] == m.mask_id).any()


def test_bert4rec_encode_appends_a_mask():
    m = make("bert4rec")
    full = torch.randint(1, N + 1, (3, MAX_LEN))  # at max_len: the oldest item drops out for the [MASK]
    short = left_pad(SEQS[:3], 8)
    with torch.no_grad():
        for x in (full, short):
            ids = torch.cat([x, torch.full_like(x[:, :1], N + 1)], 1)[:, -MAX_LEN:]
            torch.testing.assert_close(m.encode(x), m.encode_all(ids)[:, -1])
        older = full.clone()
        older[:, 0] = 1 + full[:, 0] % N  # the dropped-out oldest item changes nothing
        torch.testing.assert_close(m.encode(full), m.encode(older), atol=0, rtol=0)
    assert isinstance(m, BERT4Rec) and m.mask_id == N + 1


def test_sasrec_input_norm_makes_the_input_scale_free():
    """With input_norm the first block sees LayerNorm(item + position): scaling both embeddings changes no
    state (the item embeddings' small init then cannot drown rare items); without it, it does."""
    for norm in (True, False):
        m = make("sasrec", input_norm=norm)
        x = left_pad(SEQS, 8)
        with torch.no_grad():
            before = m.encode_all(x)
            m.item_emb.weight.mul_(10.0)
            m.pos_emb.weight.mul_(10.0)
            after = m.encode_all(x)
        assert torch.allclose(before, after, atol=1e-2) == norm  # LayerNorm's eps: not exactly scale-free
    assert make("sasrec").pos_emb.weight.std() < 0.05  # small, like the items
    assert make("sasrec", input_norm=False).pos_emb.weight.std() > 0.5  # nn.Embedding's N(0, 1): old runs reproduce


def test_sasrec_item_scale_off_adds_the_item_embedding_as_it_is():
    """item_scale: false is the scaled model with item embeddings divided by sqrt(dim): same states."""
    scaled, plain = make("sasrec"), make("sasrec", item_scale=False)
    with torch.no_grad():
        plain.item_emb.weight.copy_(scaled.item_emb.weight * DIM**0.5)
        x = left_pad(SEQS, 8)
        torch.testing.assert_close(plain.encode_all(x), scaled.encode_all(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", [(7, 50, 4), (1000, 3000, 16)])
def test_chunked_cross_entropy_equals_the_whole_logits(shape, monkeypatch):
    """The chunked loss (never holding the targets × items logits) gives the loss and both gradients of
    F.cross_entropy on the whole matrix, to float rounding; several chunks and one."""
    import ltrec.models.losses as losses

    M, N, D = shape
    g = torch.Generator().manual_seed(0)
    h = torch.randn(M, D, generator=g, dtype=torch.float64, requires_grad=True)
    W = (torch.randn(N, D, generator=g, dtype=torch.float64) * 0.3).requires_grad_()
    t = torch.randint(0, N, (M,), generator=g)
    w = torch.rand(M, generator=g, dtype=torch.float64)
    want = (torch.nn.functional.cross_entropy(h @ W.T, t, reduction="none") * w).sum()
    want_grads = torch.autograd.grad(want, [h, W])
    for chunk in (8 * 4 * N, 1 << 40):  # 8 targets a chunk, then all at once
        monkeypatch.setattr(losses, "CHUNK_BYTES", chunk)
        monkeypatch.setattr(losses, "THREAD_ROWS", chunk)
        got = (losses.chunked_ce(h, W, t) * w).sum()
        grads = torch.autograd.grad(got, [h, W])
        torch.testing.assert_close(got, want)
        for a, b in zip(grads, want_grads):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("shape", [(7, 50, 4), (1000, 3000, 16)])
def test_mean_cross_entropy_gradients_from_the_forward_equal_autograd(shape, weighted, monkeypatch):
    """mean_ce computes its gradients in the forward; they equal autograd's through F.cross_entropy's
    mean (or weighted mean Σ w·ce / Σ w), scaled by whatever multiplies the loss afterwards; without a
    gradient it is the plain (weighted) mean."""
    import ltrec.models.losses as losses

    M, N, D = shape
    g = torch.Generator().manual_seed(1)
    h = torch.randn(M, D, generator=g, dtype=torch.float64, requires_grad=True)
    W = (torch.randn(N, D, generator=g, dtype=torch.float64) * 0.3).requires_grad_()
    t = torch.randint(0, N, (M,), generator=g)
    w = torch.rand(M, generator=g, dtype=torch.float64) * 3 if weighted else None
    each = torch.nn.functional.cross_entropy(h @ W.T, t, reduction="none")
    want = (each.mean() if w is None else (w * each).sum() / w.sum()) * 2.5
    want_grads = torch.autograd.grad(want, [h, W])
    for chunk in (8 * 4 * N, 1 << 40):
        monkeypatch.setattr(losses, "CHUNK_BYTES", chunk)
        monkeypatch.setattr(losses, "THREAD_ROWS", chunk)
        got = losses.mean_ce(h, W, t, w) * 2.5
        torch.testing.assert_close(got, want)
        for a, b in zip(torch.autograd.grad(got, [h, W]), want_grads):
            torch.testing.assert_close(a, b)
        with torch.no_grad():
            torch.testing.assert_close(losses.mean_ce(h, W, t, w) * 2.5, want)


def test_mean_cross_entropy_of_an_underflowing_target_is_floored_and_its_gradient_exact():
    """A float32 target whose softmax probability underflows to 0 counts −log of the smallest normal float
    (87.3 nats) instead of inf, so the step is kept; its gradient is still autograd's through F.cross_entropy."""
    import ltrec.models.losses as losses

    h = torch.tensor([[30.0, 0.0], [0.1, 0.2]], requires_grad=True)
    W = torch.tensor([[5.0, 0.0], [-5.0, 0.0], [0.0, 1.0]], requires_grad=True)
    t = torch.tensor([1, 2])  # row 0: logit 150 on item 0, −150 on its target: p ≈ e^−300
    got = losses.mean_ce(h, W, t)
    floor = -torch.log(torch.tensor(torch.finfo(torch.float32).tiny))
    want_second = torch.nn.functional.cross_entropy(h[1:] @ W.T, t[1:])
    torch.testing.assert_close(got, (floor + want_second) / 2)
    want = torch.nn.functional.cross_entropy(h @ W.T, t)
    for a, b in zip(torch.autograd.grad(got, [h, W]), torch.autograd.grad(want, [h, W])):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("loss", ["ce", "bce", "sampled"])
def test_row_weights_weigh_each_window_s_targets(loss):
    """loss_from_states with weights (B,): the mean over targets in which each target weighs its window's
    weight; equal weights give the plain mean, and a window of weight 0 drops out."""
    torch.manual_seed(0)
    m = SASRec(30, max_len=6, dim=8, heads=2, layers=1)
    states = torch.randn(3, 6, 8)
    targets = torch.tensor([[0, 0, 0, 4, 5, 6], [1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 7, 8]])

    def at(weights, rows=(0, 1, 2)):
        g = torch.Generator().manual_seed(3)  # the same negatives for every call
        return loss_from_states(m, states[list(rows)], targets[list(rows)], loss, 4, g, weights=weights)

    g = torch.Generator().manual_seed(3)
    torch.testing.assert_close(at(torch.full((3,), 2.0)), loss_from_states(m, states, targets, loss, 4, g))
    if loss == "ce":  # uniform negatives differ with the rows drawn for, so only the full softmax compares
        torch.testing.assert_close(at(torch.tensor([1.0, 0.0, 1.0])), at(None, rows=(0, 2)))
    g = torch.Generator().manual_seed(3)
    each, rows = loss_from_states(m, states, targets, loss, 4, g, per_target=True)  # (11,): 3, 6, 2 targets
    w = torch.tensor([3.0, 1.0, 0.5])[rows]
    torch.testing.assert_close(at(torch.tensor([3.0, 1.0, 0.5])), (w * each).sum() / w.sum())


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5, 0.9])
def test_dropout_drops_at_its_rate_keeps_the_mean_and_is_off_in_eval(p):
    """The rate is p within sampling noise, in both 16-bit halves of the random draws too; survivors are scaled
    by 1/(1 - p) so the mean is kept; an odd-sized input keeps its shape; each call draws a fresh mask; eval
    and p = 0 are the identity."""
    torch.manual_seed(0)
    drop, x = Dropout(p), torch.ones(3, 333_333)  # odd: the last draw's second half goes unused
    y = drop(x)
    assert y.shape == x.shape
    dropped = y == 0
    for part in (dropped.view(-1), dropped.view(-1)[0::2], dropped.view(-1)[1::2]):
        assert abs(part.float().mean().item() - p) < 5 * (p * (1 - p) / len(part)) ** 0.5  # the rate asked for
    assert abs(y.mean().item() - 1.0) < 5 * (p / (1 - p) / x.numel()) ** 0.5  # the mean kept
    assert set(y.unique().tolist()) == {0.0, torch.tensor(1 / (1 - p)).item()}  # survivors scaled by 1/(1-p)
    assert not drop(torch.ones(1000)).equal(drop(torch.ones(1000)))
    assert torch.equal(drop.eval()(x), x) and torch.equal(Dropout(0.0)(x), x)


def _cost(groups):
    return sum((b - a + base.GROUP_ROWS) * w for a, b, w in groups)


@pytest.mark.parametrize("seed", range(20))
def test_length_groups_are_the_cheapest_split(seed):
    """The exact search equals a brute force over every split of the sorted rows into contiguous groups."""
    rng = np.random.default_rng(seed)
    lengths = sorted(int(x) for x in rng.choice([0, 1, 2, 3, 5, 9, 30], size=int(rng.integers(1, 11))))
    groups = base.length_groups(lengths)
    assert [g[0] for g in groups][0] == 0 and groups[-1][1] == len(lengths)
    assert all(a < b and w == max(1, lengths[b - 1]) for a, b, w in groups)
    assert all(groups[i][1] == groups[i + 1][0] for i in range(len(groups) - 1))
    best = min(
        _cost([(a, b, max(1, lengths[b - 1])) for a, b in zip((0, *cuts), (*cuts, len(lengths)))])
        for r in range(len(lengths))
        for cuts in itertools.combinations(range(1, len(lengths)), r)
    )
    assert _cost(groups) == best


@pytest.mark.parametrize("name", NEURAL)
def test_encoding_by_length_changes_nothing(name, monkeypatch):
    """Training in groups of similar length gives the loss, the gradients and the real positions' states of
    one encoder call at the batch's width (rows out of length order and an empty row included)."""
    seqs = [[3, 7, 1, 4], [5], [], [2, 4, 6, 8, 10, 12, 14, 16, 18, 2, 3], [9, 9], [1, 2, 3, 4, 5, 6, 7]]
    inputs = left_pad([s[:-1] for s in seqs], 11)
    targets = left_pad([s[1:] for s in seqs], 11)
    monkeypatch.setattr(base, "GROUP_ROWS", 0)  # every distinct length its own group
    assert len(base.length_groups(sorted((inputs > 0).sum(1).tolist()))) == 4
    runs = []
    for grouped in (True, False):
        if not grouped:  # the reference: one call of the backbone's encoder
            monkeypatch.setattr(base, "encode_by_length", lambda encode_all, history: encode_all(history))
            monkeypatch.setattr(bert4rec, "encode_by_length", base.encode_by_length)
        m = make(name)  # eval mode: no dropout, so both runs see the same function
        loss, states = m.training_loss(inputs, targets, generator=torch.Generator().manual_seed(0))
        loss.backward()
        grads = [p.grad.clone() for p in m.parameters() if p.grad is not None]
        runs.append((loss.detach(), states.detach()[inputs > 0], grads))
    (l0, s0, g0), (l1, s1, g1) = runs
    torch.testing.assert_close(l0, l1, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s0, s1, atol=1e-5, rtol=1e-5)
    assert len(g0) == len(g1) > 0
    for a, b in zip(g0, g1):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_encoding_by_length_splits_only_where_it_saves():
    """A long-tailed batch is encoded in several calls; one of nearly full windows in one (small calls are
    slower per row, so a small saving is none)."""
    calls = []

    def encode_all(history):
        calls.append(history.shape)
        return history[..., None].float()

    tailed = left_pad([[1] * n for n in [1] * 40 + [2] * 20 + [5] * 10 + [30] * 2], 30)
    full = left_pad([[1] * n for n in [3] + [30] * 60], 30)
    for batch, n_calls in ((tailed, 4), (full, 1)):
        calls.clear()
        states = base.encode_by_length(encode_all, batch)
        assert len(calls) == n_calls
        assert torch.equal(states[..., 0], batch.float())


def test_chunk_rows_follow_the_threads():
    """One thread: at most 256 targets a chunk (cache-sized); several: 32 MB of logits a chunk."""
    import ltrec.models.losses as losses

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert losses.chunk_rows(20_000) == 256 and losses.chunk_rows(100_000) == 83
        torch.set_num_threads(2)
        assert losses.chunk_rows(20_000) == 419 and losses.chunk_rows(3_706) == 2263
    finally:
        torch.set_num_threads(threads)
