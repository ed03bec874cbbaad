"""The recurrent runtime: sizes, derivation, data, exports, resume (docs/recurrent.md)."""

import importlib.util
import json

import pytest
import torch

from nasir.rnn import corpus
from nasir.rnn.cell import SearchLM, build, derive, locked_dropout
from nasir.rnn.export import onnx_parity, scripted, to_onnx, write_torch_source
from nasir.rnn.info import lm_info
from nasir.rnn.search import search
from nasir.rnn.space import EVAL_SIZE, PUBLISHED, LanguageModel, SearchSpace, parse_genotype
from nasir.rnn.train import train

V2 = parse_genotype(PUBLISHED["DARTS_V2"])[1]
TINY = LanguageModel(tokens=11, ninp=4, nhid=4, dropout=0.3, dropouth=0.2, dropoutx=0.3, dropouti=0.1, dropoute=0.1)


def test_darts_v2_at_evaluation_size_has_the_authors_parameter_count():
    # The authors' RNNModel: Embedding(10000, 850) tied to Linear(850, 10000) (weight once, bias 10000),
    # W0 (850 + 850) x 1700, eight W_i 850 x 1700 -- counted by hand here.
    expected = 10000 * 850 + 10000 + 1700 * 1700 + 8 * 850 * 1700
    assert expected == 22_960_000  # "23M" in the paper's table
    model = build(EVAL_SIZE, V2)
    assert sum(p.numel() for p in model.parameters()) == expected
    info = lm_info(EVAL_SIZE, V2)
    assert info["params"] == expected
    assert info["params_untied"] == expected + 8_500_000


def test_info_macs_and_depth_by_hand():
    lm = LanguageModel(tokens=10, ninp=4, nhid=4)
    g = parse_genotype("Genotype(recurrent=[('tanh', 0), ('relu', 1)], concat=range(1, 3))")[1]
    # W0: 8 x 8 = 64, two nodes 4 x 8 = 32 each, decoder 4 x 10 = 40
    assert lm_info(lm, g)["macs_per_token"] == 64 + 64 + 40
    assert lm_info(lm, g)["depth"] == 3
    # search space with 2 nodes: node 1 multiplies 1 state, node 2 two states
    assert lm_info(lm, SearchSpace(nodes=2))["macs_per_token"] == 64 + 32 + 64 + 40
    # DARTS_V2: predecessors 0,1,1,1,2,5,3,5 -> depths s0..s8 = 1,2,3,3,3,4,5,4,5
    assert V2.depth() == 5


def test_derive_k1_is_the_best_non_none_pair_per_node():
    space = SearchSpace(nodes=5)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        scores = torch.rand(len(space.edges), 5, generator=g)
        got = derive(space, scores)
        for i in range(1, 6):
            pairs = [(float(scores[r, k]), space.ops[k], p) for r, (p, dst) in enumerate(space.edges) if dst == i for k in range(1, 5)]
            best = max(pairs)
            assert got.recurrent[i - 1] == (best[1], best[2])
    # `none` never wins even when it dominates
    scores = torch.zeros(len(space.edges), 5)
    scores[:, 0] = 1.0
    scores[3, 2] = 0.1  # edge s0 -> s3? rows of node 3 are 3, 4, 5 -> (0, 3)
    assert derive(space, scores).recurrent[2] == ("relu", 0)


def test_derived_cell_step_by_hand():
    g = parse_genotype("Genotype(recurrent=[('sigmoid', 0), ('identity', 0)], concat=[1, 2])")[1]
    lm = LanguageModel(tokens=5, ninp=3, nhid=3, dropout=0, dropouth=0, dropoutx=0, dropouti=0, dropoute=0)
    torch.manual_seed(0)
    model = build(lm, g).eval()
    words, h = torch.tensor([[1, 4]]), torch.randn(2, 3)
    lp, h1 = model(words, h)
    W0, W1, W2 = model.cell.W0, model.cell.Ws[0], model.cell.Ws[1]
    x = model.encoder.weight[words[0]]
    z = torch.cat([x, h], 1) @ W0
    s0 = h + torch.sigmoid(z[:, :3]) * (torch.tanh(z[:, 3:]) - h)
    z1, z2 = s0 @ W1, s0 @ W2
    s1 = s0 + torch.sigmoid(z1[:, :3]) * (torch.sigmoid(z1[:, 3:]) - s0)
    s2 = s0 + torch.sigmoid(z2[:, :3]) * (z2[:, 3:] - s0)
    want = (s1 + s2) / 2
    assert torch.allclose(h1, want, atol=1e-6)
    logits = want @ model.encoder.weight.t() + model.decoder.bias
    assert torch.allclose(lp[0], torch.log_softmax(logits, -1), atol=1e-6)


def test_locked_dropout_one_mask_per_sequence():
    torch.manual_seed(0)
    x = torch.ones(6, 3, 50)
    y = locked_dropout(x, 0.5, True)
    assert torch.equal(y[0].expand_as(y), y)  # the same mask at every time step
    assert set(torch.unique(y).tolist()) == {0.0, 2.0}
    assert torch.equal(locked_dropout(x, 0.5, False), x)


def test_genotype_parsing_without_eval():
    name, g = parse_genotype("DARTS_V2 = " + PUBLISHED["DARTS_V2"])
    assert name == "DARTS_V2" and g == V2 and g.concat == tuple(range(1, 9))
    enas = parse_genotype(PUBLISHED["ENAS"])[1]
    assert enas.nodes == 11 and enas.concat == (2, 5, 6, 9, 10, 11)
    assert parse_genotype(str(V2))[1] == V2  # prints back in the authors' form
    for bad in ("Genotype(recurrent=[('conv', 0)], concat=[1])", "Genotype(recurrent=[('relu', 1)], concat=[1])",
                "Genotype(recurrent=__import__('os'), concat=[1])", "Genotype(normal=[], concat=[1])"):  # fmt: skip
        with pytest.raises(ValueError):
            parse_genotype(bad)


def test_ptb_reader(tmp_path):
    (tmp_path / "ptb.train.txt").write_text(" the cat sat \n a dog \n")
    (tmp_path / "ptb.valid.txt").write_text(" the dog\n")
    (tmp_path / "ptb.test.txt").write_text(" a bird sat\n")
    c = corpus.load(f"ptb:{tmp_path}")
    assert c.words == ("the", "cat", "sat", "<eos>", "a", "dog", "bird")
    assert c.train.tolist() == [0, 1, 2, 3, 4, 5, 3]
    assert c.valid.tolist() == [0, 5, 3] and c.test.tolist() == [4, 6, 2, 3]
    with pytest.raises(corpus.CorpusError, match="missing"):
        corpus.load(f"ptb:{tmp_path / 'nowhere'}")
    with pytest.raises(corpus.CorpusError):
        corpus.load("wikitext")


def test_embedded_corpus_is_fixed_and_grammatical():
    a, b = corpus.embedded_corpus(), corpus.embedded_corpus()
    assert torch.equal(a.train, b.train) and a.words == b.words
    assert a.tokens == 76 and 20000 < a.train.numel() < 35000 and a.valid.numel() > 2000
    words = [a.words[i] for i in a.train.tolist()]
    sentences = " ".join(words).split(" <eos>")[:-1]
    dets = {"the", "a", "this", "every", "some", "these", "many"}
    assert all(s.split()[0] in dets for s in sentences)  # every sentence opens with a noun phrase


def test_batchify_and_get_batch():
    src = corpus.batchify(torch.arange(10), 3)
    assert src.tolist() == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]
    x, y = corpus.get_batch(src, 1, 5)
    assert x.tolist() == [[1, 4, 7]] and y.tolist() == [2, 5, 8]


def test_exports_match_pytorch(tmp_path):
    torch.manual_seed(1)
    model = build(TINY, V2)
    path = to_onnx(model, tmp_path / "lm.onnx")
    assert onnx_parity(model, path, lengths=(3, 11), batch=2) < 1e-4
    model.eval()
    words, h = torch.randint(0, 11, (9, 5)), torch.randn(5, 4)
    want = model(words, h)
    script = scripted(model)
    got = script(words, h)
    assert torch.allclose(got[0], want[0], atol=1e-6) and torch.allclose(got[1], want[1], atol=1e-6)
    src = write_torch_source(model, tmp_path / "lm_model.py")
    spec = importlib.util.spec_from_file_location("lm_model", src)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    gen = mod.RecurrentLM()
    gen.load_state_dict(model.state_dict())
    out = gen(words, h)
    assert torch.allclose(out[0], want[0], atol=1e-6) and torch.allclose(out[1], want[1], atol=1e-6)


def _tiny_search(out, **kw):
    lm = LanguageModel(ninp=4, nhid=4, dropout=0.2, dropouth=0.1, dropoutx=0.2, dropouti=0.1, dropoute=0)
    return search(SearchSpace(nodes=3), lm, out, epochs=2, batch_size=128, eval_batch_size=64, bptt=10,
                  limit_batches=3, artifacts=False, **kw)  # fmt: skip


@pytest.mark.parametrize("order,select", [(1, "magnitude"), (2, "strength")])
def test_search_resumes_to_the_same_result(tmp_path, order, select):
    whole = _tiny_search(tmp_path / "a", order=order, select=select)
    with pytest.raises(KeyboardInterrupt):
        _tiny_search(tmp_path / "b", order=order, select=select, stop_after_steps=4)
    resumed = _tiny_search(tmp_path / "b", order=order, select=select, resume=True)
    assert resumed.alphas == whole.alphas
    assert (tmp_path / "a" / "derived.cell").read_text() == (tmp_path / "b" / "derived.cell").read_text()
    assert len(resumed.metrics) == 2 and resumed.metrics[-1]["steps"] == 3
    assert json.loads((tmp_path / "b" / "alphas.json").read_text())["rnn"] == whole.alphas
    assert whole.alphas != json.loads((tmp_path / "a" / "alphas" / "epoch_001.json").read_text())["rnn"]


def test_search_alpha_moves_and_supernet_excludes_alpha_from_weights():
    m = SearchLM(TINY, SearchSpace(nodes=2))
    assert all(p is not m.alpha for p in m.weight_parameters())
    assert m.alpha.shape == (3, 5)


def test_train_switches_to_asgd_and_resumes(tmp_path):
    lm = LanguageModel(ninp=8, nhid=8, dropout=0.1, dropouth=0.1, dropoutx=0.1, dropouti=0.1, dropoute=0.0)
    g = parse_genotype("Genotype(recurrent=[('tanh', 0), ('relu', 1)], concat=range(1, 3))")[1]
    kw = dict(epochs=4, batch_size=64, eval_batch_size=64, test_batch_size=64, bptt=10, limit_batches=4, nonmono=1, lr=400.0)
    whole = train(g, lm, tmp_path / "a", **kw)
    with pytest.raises(KeyboardInterrupt):
        train(g, lm, tmp_path / "b", stop_after_steps=6, **kw)
    resumed = train(g, lm, tmp_path / "b", resume=True, **kw)
    assert resumed.test_ppl == whole.test_ppl and resumed.metrics == [dict(m, seconds=r["seconds"]) for m, r in zip(whole.metrics, resumed.metrics)]
    a = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    switched = [m["epoch"] for m in whole.metrics if m["switched_to_asgd"]]
    assert len(switched) == 1 and switched[0] < 4  # the resumed run crossed the switch as well
    assert whole.metrics[-1]["optimizer"] == "asgd"


def test_train_learns_the_embedded_corpus(tmp_path):
    lm = LanguageModel(ninp=16, nhid=16, dropout=0.1, dropouth=0.1, dropoutx=0.1, dropouti=0.1, dropoute=0.0)
    r = train(V2, lm, tmp_path, epochs=2, batch_size=32, eval_batch_size=32, test_batch_size=32, limit_batches=15)
    assert r.metrics[-1]["valid_ppl"] < r.metrics[0]["train_ppl"]
    assert r.test_ppl < 76 / 2  # well below the uniform guess over the 76 words
