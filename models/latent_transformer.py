"""Causal transformers (`transformer`, `latent_transformer`): a GPT-style baseline and a variant that
gets K learned latent "thinking" tokens between the prompt and the answer.

Every task these models serve is autoregressive: next-step regression on antipodal windows,
next-token classification, and seq2seq answers that are trained with teacher forcing and decoded
greedily. A bidirectional encoder would see the very token it has to predict, so the attention
mask is always causal: the output at position t depends on inputs 0..t only.

Layout of the latent model, for a prompt `21*43=` (12 x 34, digits reversed) and its answer:

    input x:     2 1 * 4 3 = 8 0 4          (teacher forcing: x[t+1] = y[t])
    model reads: 2 1 * 4 3 L1 .. LK = 8 0 4  (the K latent tokens go right before the separator)
    outputs:     one per input position, read where that input sits in the longer sequence

The model's internal sequence is longer by exactly K, the latent positions produce no output (so
they carry no loss), and output t stays aligned with x[t] and batch["y"][t]: the prediction of
the first answer token is made at the separator, after the prompt and all latent tokens. Without a
separator token (vector inputs, plain token streams) the latent tokens go right before the last
input step, so the last prediction is the one made after thinking.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from models.contract import SequenceModel
from models.inputs import input_layer
from models.registry import register_model

INIT_STD = 0.02  # GPT-2's weight scale


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which position t attends to positions 0..t."""

    def __init__(self, d_model: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.out.is_residual_projection = True

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        batch, length, width = h.shape
        q, k, v = self.qkv(h).view(batch, length, 3, self.num_heads, width // self.num_heads).permute(2, 0, 3, 1, 4)
        attended = nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out(attended.transpose(1, 2).reshape(batch, length, width))


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: h + attention(LN(h)), then h + MLP(LN(h)) with a GELU MLP."""

    def __init__(self, d_model: int, num_heads: int, mlp_ratio: int, dropout: float) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(d_model)
        self.attention = CausalSelfAttention(d_model, num_heads, dropout)
        self.mlp_norm = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, mlp_ratio * d_model),
            nn.GELU(),
            nn.Linear(mlp_ratio * d_model, d_model),
            nn.Dropout(dropout),
        )
        self.mlp[2].is_residual_projection = True
        self.residual_dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.residual_dropout(self.attention(self.attention_norm(h)))
        return h + self.mlp(self.mlp_norm(h))


@register_model("transformer")
class SimpleTransformer(SequenceModel):
    """A causal pre-LN transformer with learnable positions and a readout at every position.

    Reads vectors (a bias-free linear projection) or token ids (an embedding); returns (B, T,
    output_dim): predictions for regression, logits for token tasks. Initialised as GPT-2: every
    weight ~ N(0, 0.02), biases 0, and the projections that write into the residual stream
    scaled by 1/sqrt(2 * num_layers), so the stream's variance does not grow with depth.

    Args:
        output_dim: prediction size (the vocabulary size for token tasks).
        input_dim / vocab_size: exactly one: the size of input vectors, or the number of token ids.
        d_model: width of the residual stream; a multiple of num_heads.
        num_layers: number of transformer blocks.
        num_heads: attention heads per block.
        mlp_ratio: hidden width of each MLP as a multiple of d_model.
        dropout: dropout on attention weights and residual branches, in [0, 1).
        max_length: number of learnable positions, the longest sequence the model reads.
        gradient_checkpointing: recompute each block's activations in the backward pass instead of
            storing them (less memory, about one more forward pass of compute); training only.
    """

    supported_tasks = ("regression", "classification", "seq2seq")
    supported_inputs = ("vectors", "tokens")

    def __init__(
        self,
        output_dim: int,
        input_dim: int | None = None,
        vocab_size: int | None = None,
        d_model: int = 64,
        num_layers: int = 2,
        num_heads: int = 4,
        mlp_ratio: int = 4,
        dropout: float = 0.0,
        max_length: int = 128,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (
            ("output_dim", output_dim),
            ("d_model", d_model),
            ("num_layers", num_layers),
            ("num_heads", num_heads),
            ("mlp_ratio", mlp_ratio),
            ("max_length", max_length),
        ):
            if value < 1:
                raise ValueError(f"{name}={value} is not allowed; it must be a positive integer.")
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} is not allowed; it must be a multiple of num_heads={num_heads}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout} is not allowed; it must lie in [0, 1).")
        self.max_length = max_length
        self.gradient_checkpointing = gradient_checkpointing
        self.input = input_layer(input_dim, vocab_size, d_model)
        self.positions = nn.Parameter(torch.empty(max_length, d_model))
        self.input_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(TransformerBlock(d_model, num_heads, mlp_ratio, dropout) for _ in range(num_layers))
        self.final_norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, output_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        residual_std = INIT_STD / math.sqrt(2 * len(self.blocks))
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                std = residual_std if getattr(module, "is_residual_projection", False) else INIT_STD
                nn.init.normal_(module.weight, 0.0, std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for vectors in self._parameters.values():  # the model's own tables: positions, latent tokens
            nn.init.normal_(vectors, 0.0, INIT_STD)

    def check_input_length(self, length: int) -> None:
        """Fail in one sentence when inputs of `length` steps need more positions than the model has."""
        if length + self.extra_length > self.max_length:
            latents = f" plus {self.extra_length} latent tokens" if self.extra_length else ""
            raise ValueError(
                f"max_length={self.max_length} is too short for inputs of {length} steps{latents}; "
                f"raise it to at least {length + self.extra_length}."
            )

    def run_blocks(self, h: torch.Tensor) -> torch.Tensor:
        """The transformer blocks over an embedded sequence (B, T, d_model), positions added here."""
        h = self.input_dropout(h + self.positions[: h.shape[1]])
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            h = checkpoint(block, h, use_reentrant=False) if recompute else block(h)
        return h

    def forward(self, x: torch.Tensor, return_diagnostics: bool = False):
        """x: (B, T, input_dim) vectors or (B, T) token ids -> (B, T, output_dim); no diagnostics."""
        self.check_input_length(x.shape[1])
        output = self.head(self.final_norm(self.run_blocks(self.input(x))))
        return (output, {}) if return_diagnostics else output


@register_model("latent_transformer")
class LatentTransformer(SimpleTransformer):
    """SimpleTransformer plus `num_latent_tokens` learned latent tokens between prompt and answer.

    The latent tokens are inserted right before the first `separator_token` of every row (the `=`
    that ends a multiplication prompt), or right before the last input step when there is no
    separator (vectors, plain token streams); see the module docstring for the layout. Outputs at
    latent positions are dropped, so the output has the input's length, stays aligned with
    batch["y"], and latent positions carry no loss. With num_latent_tokens=0 this is the
    SimpleTransformer.

    Args (beyond SimpleTransformer's):
        num_latent_tokens: K >= 0, the number of latent tokens.
        separator_token: id of the token the latent tokens go before; build_module takes it from
            the DataModule (`separator_token`), None where the data has none.
    """

    reads_prompt_separator = True  # build_module passes the DataModule's `separator_token`

    def __init__(
        self,
        output_dim: int,
        input_dim: int | None = None,
        vocab_size: int | None = None,
        d_model: int = 64,
        num_layers: int = 2,
        num_heads: int = 4,
        mlp_ratio: int = 4,
        dropout: float = 0.0,
        max_length: int = 128,
        gradient_checkpointing: bool = False,
        num_latent_tokens: int = 8,
        separator_token: int | None = None,
    ) -> None:
        if num_latent_tokens < 0:
            raise ValueError(f"num_latent_tokens={num_latent_tokens} is not allowed; it must be >= 0.")
        if separator_token is not None and (vocab_size is None or not 0 <= separator_token < vocab_size):
            allowed = "token inputs only" if vocab_size is None else f"an id in [0, {vocab_size})"
            raise ValueError(f"separator_token={separator_token} is not allowed; it must be {allowed}.")
        if num_latent_tokens >= max_length:
            raise ValueError(
                f"num_latent_tokens={num_latent_tokens} is not allowed; it must be below "
                f"max_length={max_length} to leave positions for the input."
            )
        self.num_latent_tokens = num_latent_tokens
        self.separator_token = separator_token
        super().__init__(
            output_dim,
            input_dim,
            vocab_size,
            d_model,
            num_layers,
            num_heads,
            mlp_ratio,
            dropout,
            max_length,
            gradient_checkpointing,
        )
        self.latent_tokens = nn.Parameter(torch.empty(num_latent_tokens, d_model))
        nn.init.normal_(self.latent_tokens, 0.0, INIT_STD)

    @property
    def extra_length(self) -> int:
        return self.num_latent_tokens

    def latent_insertion_points(self, x: torch.Tensor) -> torch.Tensor:
        """(B,) index of the input step each row's latent tokens go before."""
        if self.separator_token is None:
            return torch.full((x.shape[0],), x.shape[1] - 1, dtype=torch.long, device=x.device)
        is_separator = x == self.separator_token
        if not is_separator.any(dim=1).all():
            raise ValueError(
                f"separator_token={self.separator_token} is missing from some input rows; every "
                "prompt must contain it, since the latent tokens go right before it."
            )
        return is_separator.int().argmax(dim=1)  # the first occurrence

    def insert_latents(self, embedded: torch.Tensor, insert_at: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The embedded inputs (B, T, d) with the latent tokens inserted at `insert_at`: (B, T + K, d),
        and for every input step t its position in that sequence (B, T)."""
        batch, length, width = embedded.shape
        k = self.num_latent_tokens
        position = torch.arange(length + k, device=embedded.device).expand(batch, -1)
        start = insert_at.unsqueeze(1)
        is_latent = (position >= start) & (position < start + k)
        source = torch.where(position < start, position, position - k).clamp(0, length - 1)
        from_inputs = embedded.gather(1, source.unsqueeze(-1).expand(-1, -1, width))
        latents = self.latent_tokens[(position - start).clamp(0, k - 1)]
        sequence = torch.where(is_latent.unsqueeze(-1), latents, from_inputs)
        step = position[:, :length]
        return sequence, torch.where(step < start, step, step + k)

    def forward(self, x: torch.Tensor, return_diagnostics: bool = False):
        """x: (B, T, input_dim) or (B, T) -> (B, T, output_dim), the outputs at the input positions."""
        if self.num_latent_tokens == 0:
            return super().forward(x, return_diagnostics)
        self.check_input_length(x.shape[1])
        sequence, input_positions = self.insert_latents(self.input(x), self.latent_insertion_points(x))
        hidden = self.run_blocks(sequence)
        hidden = hidden.gather(1, input_positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        output = self.head(self.final_norm(hidden))
        return (output, {}) if return_diagnostics else output
