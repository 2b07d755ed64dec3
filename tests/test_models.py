import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ltrec.models import BACKBONES, SASRec, Pop, loss_from_states, next_item_loss

N, MAX_LEN, DIM = 20, 12, 16
NEURAL = ("gru4rec", "sasrec")


def make(name, **kw):
    torch.manual_seed(0)
    kw = {"dim": DIM, **kw}
    if name == "gru4rec":
        kw.setdefault("layers", 2)  # two layers also checks that zeros propagate between layers
    return BACKBONES[name](N, MAX_LEN, **kw).eval()


def left_pad(seqs, L):
    out = torch.zeros(len(seqs), L, dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            out[i, L - len(s):] = torch.tensor(s)
    return out


SEQS = [[3, 7, 1], [5], [2, 4, 6, 8, 10, 12, 14, 16], [9, 9, 20, 1, 1]]


@pytest.mark.parametrize("name", NEURAL)
def test_padding_invariance(name):
    m = make(name)
    with torch.no_grad():
        short, long_ = m.encode(left_pad(SEQS, 8)), m.encode(left_pad(SEQS, 12))
        torch.testing.assert_close(short, long_, atol=1e-5, rtol=0)
        # each row alone (no batch-mates) gives the same state as in the mixed batch
        for i, s in enumerate(SEQS):
            torch.testing.assert_close(m.encode(left_pad([s], len(s)))[0], short[i], atol=1e-5, rtol=0)


def test_sasrec_causal():
    m = make("sasrec")
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


@pytest.mark.parametrize("name", NEURAL)
def test_all_padding_row_no_nan(name):
    m = make(name)
    x = left_pad([[], [1, 2]], 6)
    with torch.no_grad():
        assert torch.isfinite(m.encode_all(x)).all()
        assert torch.isfinite(m(x)).all()
    m.train()
    loss = next_item_loss(m, x, left_pad([[], [2, 3]], 6))
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
        value = next_item_loss(m, inputs, targets, loss=loss, negatives=5, generator=g)
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
    m.fit(counts)
    for b in (1, 5):
        out = m(left_pad([[1, 2]] * b, 4))
        assert out.shape == (b, N)
        torch.testing.assert_close(out, counts.expand(b, N))


@pytest.mark.parametrize("name", NEURAL)
def test_onnx_export(name, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    m = make(name)
    example = left_pad(SEQS[:2], MAX_LEN)
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(m, (example,), str(path), dynamo=False, input_names=["history"], output_names=["scores"],
                      dynamic_axes={"history": {0: "batch"}}, opset_version=17)
    other = left_pad(SEQS + [[], [4, 4, 4]], MAX_LEN)  # batch of 6, includes an all-pad row
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(["scores"], {"history": other.numpy()})
    with torch.no_grad():
        want = m(other).numpy()
    assert got.shape == (6, N)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
