"""HuggingFace ``transformers`` models as clients of fisherkl.nn: GPT-2 (a causal LM with dict batches, shifted
labels, −100 masking, Conv1D layers, tied embeddings) and BERT (a sequence classifier with padding), built from
tiny configs with random weights (no download). Oracles as in test_nn_sequences.py."""

from __future__ import annotations

import pytest
import torch

import fisherkl.nn as fnn
from nn_reference import hand_kfac, reference_fisher
from seq_models import F64

transformers = pytest.importorskip("transformers")  # installed by the Makefile (test extra)

TOL = {"rtol": 1e-10, "atol": 1e-12}


def gpt2(layers: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(
        vocab_size=13, n_positions=8, n_embd=8, n_layer=layers, n_head=2, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(cfg).to(F64).eval()


def lm_batch(n: int = 4, t: int = 6, seed: int = 1) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, 13, (n, t), generator=torch.Generator().manual_seed(seed))
    labels = ids.clone()
    labels[0, 4:] = -100  # the last tokens of example 0 do not count
    labels[2, :3] = -100  # nor a prompt
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def lm_outputs(batch):
    return lambda m, i: m(input_ids=batch["input_ids"][i : i + 1]).logits[0, :-1]


def test_gpt2_dense_equals_brute_force_with_shifted_masked_labels():
    m, b = gpt2(), lm_batch()
    mask = b["labels"][:, 1:] != -100
    ref = reference_fisher(m, lm_outputs(b), 4, mask=mask)
    f = fnn.fisher(m, [b], representation="dense", adapter=fnn.causal_lm())
    torch.testing.assert_close(f.to_dense(), ref, **TOL)
    assert "transformer.wte.weight" in f.layout.names and "lm_head.weight" not in f.layout.names  # tied


@pytest.mark.parametrize("mode", ["expand", "reduce"])
def test_gpt2_kfac_end_to_end_with_hand_factors_for_conv1d(mode):
    m, b = gpt2(), lm_batch()
    mask = b["labels"][:, 1:] != -100
    k = fnn.fisher(m, [b], representation="kfac", kfac_mode=mode, adapter=fnn.causal_lm())
    blocks = {blk.key: blk for blk in k.blocks}
    assert "transformer.h.1.attn.c_attn.weight" in blocks and blocks["transformer.h.1.attn.c_attn.weight"].transposed
    assert blocks["transformer.wpe.weight"].tensors["A"].ndim == 1  # position embedding: diagonal A
    assert "transformer.wte.weight" in k.rest  # tied to the output head: exact diagonal

    def masked(mod, i):
        return lm_outputs(b)(mod, i) * mask[i].to(F64).unsqueeze(-1)  # masked positions carry no Fisher

    for name in ("transformer.h.0.attn.c_attn", "transformer.h.1.mlp.c_proj"):
        module = m.get_submodule(name)
        a, g = hand_kfac(m, module, masked, 4, mode=mode)
        torch.testing.assert_close(blocks[f"{name}.weight"].tensors["A"], a, **TOL)
        torch.testing.assert_close(blocks[f"{name}.weight"].tensors["G"], g, **TOL)
    # the block acts on the weight in its stored [d_in, d_out] orientation: F·vec(V) = vec(A V G) (no bias)
    blk = blocks["transformer.h.0.attn.c_attn.weight"]
    w = m.get_submodule("transformer.h.0.attn.c_attn").weight
    v = torch.zeros(k.p, dtype=F64)
    sl = k.layout.slice("transformer.h.0.attn.c_attn.weight")
    vw = torch.randn(w.shape, dtype=F64, generator=torch.Generator().manual_seed(3))
    v[sl] = vw.reshape(-1)
    a_w = blk.tensors["A"][: w.shape[0], : w.shape[0]]
    torch.testing.assert_close(k.mv(v)[sl].reshape(w.shape), a_w @ vw @ blk.tensors["G"], **TOL)


def test_gpt2_a_masked_label_never_changes_the_result():
    m, b = gpt2(), lm_batch()
    mask = b["labels"][:, 1:] != -100
    filled = dict(b, labels=torch.where(b["labels"] == -100, torch.full_like(b["labels"], 5), b["labels"]))
    by_mask = fnn.Adapter(mask=lambda batch: torch.nn.functional.pad(mask, (1, 0)), shift=1, ignore_index=None)
    for kind in ("exact", "mc", "empirical"):
        a = fnn.fisher(m, [b], kind=kind, representation="diag", adapter=fnn.causal_lm(), seed=4).diag()
        c = fnn.fisher(m, [filled], kind=kind, representation="diag", adapter=by_mask, seed=4).diag()
        torch.testing.assert_close(a, c, **TOL)


def test_gpt2_kl_ewc_natural_gradient_and_report_accept_the_model():
    m, b = gpt2(layers=1), lm_batch()
    lm = fnn.causal_lm()
    f = fnn.fisher(m, [b], representation="dense", adapter=lm)
    d = torch.randn(f.p, dtype=F64, generator=torch.Generator().manual_seed(2))
    delta = 1e-4 * d / d.norm()
    kl = fnn.kl(m, fnn.perturbed(m, delta), [b], adapter=lm)
    assert abs(float(0.5 * f.quad(delta) / kl) - 1) < 1e-3
    ewc = fnn.EWC(m, fnn.fisher(m, [b], representation="kfac", adapter=lm))
    assert float(ewc().detach()) == 0.0
    rep = fnn.approximation_report(
        m, [b], representations=("diag", "kfac"), directions=("random", "gradient"), step_sizes=(1e-6,), adapter=lm
    )
    for row in rep.rows:  # steps scaled to ½δᵀF_exactδ = 1e-6: the exact KL of such a step is 1e-6
        assert abs(row.exact / row.step - 1) < 1e-2, row
    opt = fnn.NaturalGradient(
        m.parameters(), "kfac", lr=0.1, damping=1e-2, net=m, fisher_kwargs={"adapter": lm}, fisher_data=[b]
    )
    before = float(m(**b).loss.detach())
    for _ in range(5):
        opt.zero_grad()
        m(**b).loss.backward()
        opt.step()
    assert float(m(**b).loss.detach()) < before


def test_bert_classifier_dense_equals_brute_force_with_padding():
    torch.manual_seed(5)
    cfg = transformers.BertConfig(
        vocab_size=17, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16,
        max_position_embeddings=10, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    m = transformers.BertForSequenceClassification(cfg).to(F64).eval()
    ids = torch.randint(1, 17, (4, 6), generator=torch.Generator().manual_seed(6))
    att = torch.ones_like(ids)
    att[1, 4:] = 0
    att[3, 5:] = 0
    batch = {"input_ids": ids, "attention_mask": att}

    def outputs(mod, i):
        return mod(input_ids=ids[i : i + 1], attention_mask=att[i : i + 1]).logits[0]

    ref = reference_fisher(m, outputs, 4)
    f = fnn.fisher(m, [batch], representation="dense")
    torch.testing.assert_close(f.to_dense(), ref, **TOL)
    k = fnn.fisher(m, [batch], representation="kfac")
    assert {blk.key for blk in k.blocks} >= {"bert.encoder.layer.0.attention.self.query.weight", "classifier.weight"}
