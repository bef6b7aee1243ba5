"""Soft-prompt tuning on a frozen encoder, with the concentration-reweighting loss.

"Concentrate Attention: Towards Domain-Generalizable Prompt Optimization for Language Models" (Li et al.,
NeurIPS 2024, https://arxiv.org/abs/2406.10584) observes that prompts which generalise across domains are
those the decoding position attends to strongly (high concentration strength) and steadily across inputs (low
fluctuation), and trains soft prompts with a loss that pushes both. Here, on a frozen BERT-style encoder:

- learned prompt vectors ``P`` (m, d) are inserted right after ``[CLS]``: ``[CLS] P x [SEP]``; the classifier is a
  linear layer on the last hidden state at ``[CLS]`` (the query / "decoding" position of an encoder);
- the loss, for per-example cross-entropies ``l_i`` and strengths ``s_i`` (see :mod:`densattn.concentration.metrics`):

  ``L = (1/B) sum_i w_i l_i + lambda_s * mean_i(-log s_i) + lambda_f * Var_i(s_i)``,
  ``w = B * softmax(-lambda_w * (s - mean s) / (std s + eps))`` (weights are constants: gradients stop at w),

  so low-concentration examples weigh more in the task loss, the second term raises strength and the third
  lowers fluctuation. With ``lambda_w = lambda_s = lambda_f = 0`` the loss *is* ``F.cross_entropy`` (the same
  call), i.e. plain prompt tuning, bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from densattn.concentration.metrics import QueryAttentionRecorder, concentration_fluctuation, concentration_strength

__all__ = [
    "SoftPromptClassifier",
    "concentration_reweighting_loss",
    "evaluate_soft_prompt",
    "train_soft_prompt",
]


class SoftPromptClassifier(nn.Module):
    """A frozen encoder with a learned soft prompt after ``[CLS]`` and a linear classifier on ``[CLS]``.

    Args:
        encoder: a frozen BERT-style HF model (``inputs_embeds`` input, ``last_hidden_state`` output).
        num_classes: number of labels C.
        prompt_length: number m of prompt vectors (0 gives a plain linear probe on ``[CLS]``).
        concentration_layers: self-attention layers whose ``[CLS]`` row defines the strength (default: the deeper
            half, e.g. layers 3, 4, 5 of MiniLM-L6).
        generator: seeds the prompt initialisation (embeddings of random vocabulary tokens) and the classifier.

    Shapes: ``token_embeddings`` (B, n, d) word embeddings of ``[CLS] x [SEP] pad`` (see
    :meth:`embed_tokens`), ``attention_mask`` (B, n) bool/int (True = keep); logits (B, C); strengths (B,).

    Example:
        >>> from transformers import BertConfig, BertModel
        >>> config = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        ...                     intermediate_size=32)
        >>> model = SoftPromptClassifier(BertModel(config), num_classes=3, prompt_length=4)
        >>> ids = torch.tensor([[1, 7, 8, 2]])
        >>> logits, strength = model(model.embed_tokens(ids), torch.ones(1, 4), need_strength=True)
        >>> tuple(logits.shape), tuple(strength.shape)
        ((1, 3), (1,))
    """

    def __init__(
        self,
        encoder: nn.Module,
        *,
        num_classes: int,
        prompt_length: int = 8,
        concentration_layers: Sequence[int] | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes: need at least 2, got {num_classes}")
        if prompt_length < 0:
            raise ValueError(f"prompt_length: must be >= 0, got {prompt_length}")
        self.encoder = encoder.eval()
        for parameter in self.encoder.parameters():
            parameter.requires_grad_(False)
        num_layers = encoder.config.num_hidden_layers
        hidden = encoder.config.hidden_size
        self.concentration_layers = (
            list(range(num_layers // 2, num_layers)) if concentration_layers is None else list(concentration_layers)
        )
        self.prompt_length = prompt_length
        word = encoder.get_input_embeddings().weight
        vocab = word.shape[0]
        low = 1000 if vocab > 2000 else 0  # skip BERT's [unused]/special rows when the vocabulary is real
        ids = torch.randint(low, vocab, (prompt_length,), generator=generator)
        factory = {"device": device, "dtype": dtype}
        self.prompt = nn.Parameter(word.detach()[ids].clone().to(**factory))  # (m, d)
        self.classifier = nn.Linear(hidden, num_classes, **factory)
        bound = hidden**-0.5
        with torch.no_grad():
            self.classifier.weight.uniform_(-bound, bound, generator=generator)
            self.classifier.bias.zero_()

    def train(self, mode: bool = True) -> SoftPromptClassifier:
        super().train(mode)
        self.encoder.eval()  # the encoder stays frozen and deterministic (no dropout)
        return self

    @torch.no_grad()
    def embed_tokens(self, input_ids: Tensor) -> Tensor:
        """Frozen word embeddings (B, n) -> (B, n, d); cache these once per dataset."""
        return self.encoder.get_input_embeddings()(input_ids)

    def prompt_mask(self, length: int, *, device: torch.device | None = None) -> Tensor:
        """Bool (N,) with True at the prompt positions 1..m of a prompted sequence of total length N."""
        mask = torch.zeros(length, dtype=torch.bool, device=device)
        mask[1 : 1 + self.prompt_length] = True
        return mask

    def forward(
        self, token_embeddings: Tensor, attention_mask: Tensor, *, need_strength: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        batch = token_embeddings.shape[0]
        keep = attention_mask.to(torch.long)
        prompt = self.prompt.to(token_embeddings.dtype).expand(batch, -1, -1)  # (B, m, d)
        embeds = torch.cat([token_embeddings[:, :1], prompt, token_embeddings[:, 1:]], dim=1)  # (B, N, d)
        ones = keep.new_ones(batch, self.prompt_length)
        mask = torch.cat([keep[:, :1], ones, keep[:, 1:]], dim=1)  # (B, N)
        if not need_strength:
            hidden = self.encoder(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
            return self.classifier(hidden[:, 0])
        if self.prompt_length == 0:
            raise ValueError("need_strength: a model with prompt_length=0 has no prompt to concentrate on")
        with QueryAttentionRecorder(self.encoder, query_index=0, layers=self.concentration_layers) as recorder:
            hidden = self.encoder(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        strength = concentration_strength(recorder.rows, 0, self.prompt_mask(embeds.shape[1], device=embeds.device))
        return self.classifier(hidden[:, 0]), strength


def concentration_reweighting_loss(
    logits: Tensor,
    labels: Tensor,
    strengths: Tensor | None = None,
    *,
    reweight: float = 0.0,
    strength_weight: float = 0.0,
    fluctuation_weight: float = 0.0,
    eps: float = 1e-6,
) -> Tensor:
    """Concentration-reweighting loss (module docstring has the equation).

    Args:
        logits: (B, C); labels: (B,) int64; strengths: (B,) concentration strengths (needed when any weight >
        0). reweight: ``lambda_w``, inverse temperature of the per-example weights over standardised strength.
        strength_weight: ``lambda_s`` of ``mean(-log s)``; fluctuation_weight: ``lambda_f`` of ``Var(s)``.

    Returns:
        the scalar loss; with all three weights 0 it is exactly ``F.cross_entropy(logits, labels)``.

    Example:
        >>> logits, labels = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
        >>> torch.equal(concentration_reweighting_loss(logits, labels), F.cross_entropy(logits, labels))
        True
    """
    for name, value in (("reweight", reweight), ("strength_weight", strength_weight)):
        if value < 0:
            raise ValueError(f"{name}: must be >= 0, got {value}")
    if fluctuation_weight < 0:
        raise ValueError(f"fluctuation_weight: must be >= 0, got {fluctuation_weight}")
    if reweight == 0 and strength_weight == 0 and fluctuation_weight == 0:
        return F.cross_entropy(logits, labels)
    if strengths is None:
        raise ValueError("strengths: required when reweight, strength_weight or fluctuation_weight is > 0")
    if reweight == 0:
        loss = F.cross_entropy(logits, labels)
    else:
        per_example = F.cross_entropy(logits, labels, reduction="none")  # (B,)
        s = strengths.detach()
        z = (s - s.mean()) / (s.std(unbiased=False) + eps)
        weights = s.numel() * torch.softmax(-reweight * z, dim=0)  # mean 1, larger where strength is low
        loss = (weights * per_example).mean()
    if strength_weight:
        loss = loss + strength_weight * (-torch.log(strengths.clamp_min(eps))).mean()
    if fluctuation_weight:
        loss = loss + fluctuation_weight * concentration_fluctuation(strengths)
    return loss


def train_soft_prompt(
    model: SoftPromptClassifier,
    token_embeddings: Tensor,
    attention_mask: Tensor,
    labels: Tensor,
    *,
    steps: int = 100,
    batch_size: int = 32,
    learning_rate: float = 3e-3,
    prompt_learning_rate: float = 3e-2,
    reweight: float = 0.0,
    strength_weight: float = 0.0,
    fluctuation_weight: float = 0.0,
    generator: torch.Generator | None = None,
) -> list[float]:
    """Train the prompt and classifier with AdamW on random mini-batches; returns the loss per step.

    Plain prompt tuning when the three concentration weights are 0 (the strength is then not computed). The loss
    is :func:`concentration_reweighting_loss`; only the prompt (at ``prompt_learning_rate``) and the classifier
    (at ``learning_rate``) are trained, the encoder never changes.

    Shapes:
        ``token_embeddings`` (N, n, d), ``attention_mask`` (N, n), ``labels`` (N,); returns ``steps`` floats.

    Example:
        A tiny random BERT on synthetic token sequences; the strength term pulls ``[CLS]``'s attention to the
        prompt:

        >>> from transformers import BertConfig, BertModel
        >>> generator = torch.Generator().manual_seed(0)
        >>> config = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        ...                     intermediate_size=32)
        >>> with torch.random.fork_rng():
        ...     _ = torch.manual_seed(0)
        ...     model = SoftPromptClassifier(BertModel(config), num_classes=2, prompt_length=2, generator=generator)
        >>> ids = torch.randint(3, 40, (32, 6), generator=generator)
        >>> ids[:, 0], ids[:, -1] = 1, 2  # [CLS] ... [SEP]
        >>> labels = ((ids[:, 1:-1] < 20).sum(1) > 2).long()
        >>> embeddings, mask = model.embed_tokens(ids), torch.ones(32, 6)
        >>> frozen = [p.clone() for p in model.encoder.parameters()]
        >>> before = evaluate_soft_prompt(model, embeddings, mask, labels)
        >>> losses = train_soft_prompt(model, embeddings, mask, labels, steps=30, batch_size=16, learning_rate=3e-2,
        ...                            strength_weight=1.0, generator=generator)
        >>> after = evaluate_soft_prompt(model, embeddings, mask, labels)
        >>> len(losses), after["strength"] > before["strength"]
        (30, True)
        >>> all(torch.equal(a, b) for a, b in zip(frozen, model.encoder.parameters()))
        True
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size: must be >= 1, got {steps} and {batch_size}")
    groups = [{"params": list(model.classifier.parameters()), "lr": learning_rate}]
    if model.prompt_length:
        groups.append({"params": [model.prompt], "lr": prompt_learning_rate})
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    need_strength = bool(reweight or strength_weight or fluctuation_weight)
    history = []
    model.train()
    for _ in range(steps):
        index = torch.randperm(labels.shape[0], generator=generator)[:batch_size]
        batch = (token_embeddings[index], attention_mask[index])
        if need_strength:
            logits, strength = model(*batch, need_strength=True)
        else:
            logits, strength = model(*batch), None
        loss = concentration_reweighting_loss(
            logits,
            labels[index],
            strength,
            reweight=reweight,
            strength_weight=strength_weight,
            fluctuation_weight=fluctuation_weight,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.append(float(loss.detach()))
    model.eval()
    return history


@torch.no_grad()
def evaluate_soft_prompt(
    model: SoftPromptClassifier,
    token_embeddings: Tensor,
    attention_mask: Tensor,
    labels: Tensor,
    *,
    batch_size: int = 64,
) -> dict[str, float]:
    """Accuracy, mean concentration strength and fluctuation (variance of strength) over a dataset.

    A model without a prompt (``prompt_length=0``, a linear probe on ``[CLS]``) reports the accuracy only.

    Example:
        >>> from transformers import BertConfig, BertModel
        >>> config = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        ...                     intermediate_size=32)
        >>> encoder = BertModel(config)
        >>> ids, labels = torch.tensor([[1, 7, 8, 2], [1, 9, 2, 0]]), torch.tensor([0, 1])
        >>> mask = ids != 0
        >>> prompted = SoftPromptClassifier(encoder, num_classes=2, prompt_length=3)
        >>> result = evaluate_soft_prompt(prompted, prompted.embed_tokens(ids), mask, labels)
        >>> sorted(result), 0 <= result["strength"] <= 1, result["accuracy"] in (0.0, 0.5, 1.0)
        (['accuracy', 'fluctuation', 'strength'], True, True)
        >>> probe = SoftPromptClassifier(encoder, num_classes=2, prompt_length=0)
        >>> sorted(evaluate_soft_prompt(probe, probe.embed_tokens(ids), mask, labels))
        ['accuracy']
    """
    model.eval()
    correct, strengths = 0, []
    for start in range(0, labels.shape[0], batch_size):
        part = slice(start, start + batch_size)
        if model.prompt_length:
            logits, strength = model(token_embeddings[part], attention_mask[part], need_strength=True)
            strengths.append(strength)
        else:
            logits = model(token_embeddings[part], attention_mask[part])
        correct += int((logits.argmax(-1) == labels[part]).sum())
    result = {"accuracy": correct / labels.shape[0]}
    if strengths:
        all_strengths = torch.cat(strengths)
        result["strength"] = float(all_strengths.mean())
        result["fluctuation"] = float(concentration_fluctuation(all_strengths))
    return result
