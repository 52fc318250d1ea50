"""The text-conditional image network: a small UNet F(x, t, r, tokens) for 16-32 px RGB with a caption encoder.

- Captions arrive as token ids (twinflow_core/text.py); id 0 is padding, and an all-padding row is the null
  caption of the unconditional branch. A small transformer encodes them; a learned summary token, always
  present, gives the pooled caption vector (and keeps attention defined for the null caption).
- Time: the signed-t / gated-r embedding of twinflow_core/nets/embeddings.py (`time_sign` picks how t < 0 is
  told apart), plus the pooled caption, drives FiLM (scale, shift) in every residual block.
- Words reach pixels through cross-attention at the low resolutions; a learned 2-D position embedding there
  lets "left of"/"above" bind to places.
- `patch` > 1 folds p x p pixels into channels first (pixel_unshuffle): a 32 px image costs like 16 px.
- `out_skip` (a network parameterisation, not part of the method): F = c(|t|) * x_t + net(...), with
  c(t) = (t - (1-t) s^2) / (t^2 + (1-t)^2 s^2) the least-squares linear estimate of v = z - x from
  x_t = t z + (1-t) x for data of scale s (`sigma_data`), as EDM's c_skip. At t = 1 (the 1-step generator,
  x = z - F(z, 1, 0) = -net) the network no longer has to copy the noise z through its patch stem pixel by
  pixel, which is what leaves the 1-NFE samples of a short fine-tune speckled with residual noise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from twinflow_core.nets import register_net
from twinflow_core.nets.embeddings import TimePairEmbedding


def _groups(ch: int) -> int:
    for g in (8, 4, 2, 1):
        if ch % g == 0:
            return g
    return 1


class CaptionEncoder(nn.Module):
    """Token ids (B, L) -> (tokens (B, L+1, D), key padding mask (B, L+1), pooled (B, D))."""

    def __init__(self, vocab_size: int, max_len: int, dim: int, layers: int, heads: int):
        super().__init__()
        self.max_len = max_len
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.summary = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, max_len + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim * 2, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False) if layers else None
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids: torch.Tensor):
        if ids.dim() != 2 or ids.shape[1] > self.max_len:
            raise ValueError(f"caption ids must be (B, <= {self.max_len}), got {tuple(ids.shape)}")
        b, n = ids.shape
        h = torch.cat([self.summary.expand(b, -1, -1), self.embed(ids)], dim=1) + self.pos[:, : n + 1]
        pad = torch.cat([torch.zeros(b, 1, dtype=torch.bool, device=ids.device), ids == 0], dim=1)
        if self.encoder is not None:
            h = self.encoder(h, src_key_padding_mask=pad)
        h = self.norm(h)
        return h, pad, h[:, 0]


class EncodedCaption(tuple):
    """(tokens, padding mask, pooled) of CaptionEncoder, passed as `cond` so that several calls of the same network on
    the same captions encode them once (the objective's no-grad calls; see TextUNet.encode_condition). A tuple, so
    that the objective's row selection and stacking treat it like any other structured conditioning."""


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Self-attention over pixels, then cross-attention from pixels to caption tokens."""

    def __init__(self, ch: int, size: int, text_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.pos = nn.Parameter(torch.randn(1, ch, size, size) * 0.02)
        self.norm_self = nn.GroupNorm(_groups(ch), ch)
        self.qkv = nn.Linear(ch, 3 * ch)
        self.out_self = nn.Linear(ch, ch)
        self.norm_cross = nn.GroupNorm(_groups(ch), ch)
        self.q = nn.Linear(ch, ch)
        self.kv = nn.Linear(text_dim, 2 * ch)
        self.out_cross = nn.Linear(ch, ch)
        for lin in (self.out_self, self.out_cross):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def _split(self, x):  # (B, N, C) -> (B, heads, N, C/heads)
        b, n, c = x.shape
        return x.view(b, n, self.heads, c // self.heads).transpose(1, 2)

    def _merge(self, x):
        b, h, n, d = x.shape
        return x.transpose(1, 2).reshape(b, n, h * d)

    def forward(self, x, text, text_pad):
        b, c, hgt, wid = x.shape
        x = x + self.pos
        seq = self.norm_self(x).flatten(2).transpose(1, 2)
        q, k, v = self.qkv(seq).chunk(3, dim=-1)
        a = F.scaled_dot_product_attention(self._split(q), self._split(k), self._split(v))
        x = x + self.out_self(self._merge(a)).transpose(1, 2).view(b, c, hgt, wid)
        seq = self.norm_cross(x).flatten(2).transpose(1, 2)
        k, v = self.kv(text).chunk(2, dim=-1)
        mask = ~text_pad[:, None, None, :]  # True = attend; the summary token is never padding
        a = F.scaled_dot_product_attention(self._split(self.q(seq)), self._split(k), self._split(v), attn_mask=mask)
        return x + self.out_cross(self._merge(a)).transpose(1, 2).view(b, c, hgt, wid)


@register_net("unet")
class TextUNet(nn.Module):
    """F(x, t, r, cond): x (B, 3, S, S) in data units, signed t and r (B,), cond = token ids (B, L) or None (null)."""

    def __init__(
        self,
        image_size: int = 32,
        in_channels: int = 3,
        channels: tuple[int, ...] | list[int] = (32, 64, 64),
        res_blocks: int = 1,
        attn_levels: tuple[int, ...] | list[int] = (2,),
        patch: int = 1,
        vocab_size: int = 64,
        max_len: int = 24,
        text_dim: int = 64,
        text_layers: int = 2,
        heads: int = 4,
        time_dim: int = 128,
        out_skip: bool = False,
        sigma_data: float = 0.5,
        time_sign: str = "signed",
    ):
        super().__init__()
        channels = list(channels)
        attn_levels = list(attn_levels)
        if image_size % patch:
            raise ValueError(f"image_size {image_size} is not divisible by patch {patch}")
        grid = image_size // patch
        if grid % (2 ** (len(channels) - 1)):
            raise ValueError(f"grid {grid} px cannot be halved {len(channels) - 1} times")
        if any(not 0 <= lv < len(channels) for lv in attn_levels):
            raise ValueError(f"attn_levels {attn_levels} outside 0..{len(channels) - 1}")
        if any(c % heads for c in channels) or text_dim % heads:
            raise ValueError(f"channels {channels} and text_dim {text_dim} must be divisible by heads {heads}")
        self.image_size, self.in_channels, self.patch, self.max_len = image_size, in_channels, patch, max_len
        self.out_skip, self.sigma_data = bool(out_skip), float(sigma_data)
        # activations in channels-last layout (below); an objective that differentiates the net in forward mode
        # (MeanFlow's JVP) turns it off: PyTorch's forward-mode rule of group_norm fails on that layout
        self.channels_last = True

        self.time = TimePairEmbedding(time_dim, time_sign=time_sign)
        self.text = CaptionEncoder(vocab_size, max_len, text_dim, text_layers, heads)
        self.text_to_emb = nn.Linear(text_dim, time_dim)

        cin = in_channels * patch * patch
        self.stem = nn.Conv2d(cin, channels[0], 3, padding=1)
        self.down = nn.ModuleList()
        skips = [channels[0]]
        ch, size = channels[0], grid
        for level, cout in enumerate(channels):
            blocks = nn.ModuleList()
            for _ in range(res_blocks):
                blocks.append(ResBlock(ch, cout, time_dim))
                ch = cout
                skips.append(ch)
            attn = AttnBlock(ch, size, text_dim, heads) if level in attn_levels else None
            downsample = nn.Conv2d(ch, ch, 3, stride=2, padding=1) if level < len(channels) - 1 else None
            if downsample is not None:
                skips.append(ch)
                size //= 2
            self.down.append(
                nn.ModuleDict(
                    {
                        "blocks": blocks,
                        **({"attn": attn} if attn else {}),
                        **({"down": downsample} if downsample else {}),
                    }
                )
            )
        self.mid1 = ResBlock(ch, ch, time_dim)
        self.mid_attn = AttnBlock(ch, size, text_dim, heads)
        self.mid2 = ResBlock(ch, ch, time_dim)
        self.up = nn.ModuleList()
        for level in reversed(range(len(channels))):
            cout = channels[level]
            blocks = nn.ModuleList()
            for _ in range(res_blocks + 1):
                blocks.append(ResBlock(ch + skips.pop(), cout, time_dim))
                ch = cout
            attn = AttnBlock(ch, size, text_dim, heads) if level in attn_levels else None
            upsample = nn.Conv2d(ch, ch, 3, padding=1) if level > 0 else None
            if upsample is not None:
                size *= 2
            self.up.append(
                nn.ModuleDict(
                    {"blocks": blocks, **({"attn": attn} if attn else {}), **({"up": upsample} if upsample else {})}
                )
            )
        self.out_norm = nn.GroupNorm(_groups(ch), ch)
        self.out = nn.Conv2d(ch, cin, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def encode_condition(self, cond: torch.Tensor) -> EncodedCaption:
        """Caption ids (B, L) encoded once, for forwards that reuse them (same weights, same rows)."""
        return EncodedCaption(self.text(cond))

    def forward(self, x: torch.Tensor, t: torch.Tensor, r: torch.Tensor, cond=None) -> torch.Tensor:
        b = x.shape[0]
        if cond is None:
            cond = torch.zeros(b, 1, dtype=torch.long, device=x.device)  # the null caption
        text, pad, pooled = cond if isinstance(cond, EncodedCaption) else self.text(cond)
        t, r = (t.expand(b) if t.dim() == 0 else t), (r.expand(b) if r.dim() == 0 else r)
        emb = self.time(t, r)
        emb = emb + self.text_to_emb(pooled)

        h = F.pixel_unshuffle(x, self.patch) if self.patch > 1 else x
        # channels-last activations: oneDNN's convolutions run 15-35% faster on this CPU in that layout
        # (measured, 1.3M-param net, batch 64); the values are the same up to float summation order
        h = self.stem(
            h.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        )
        hs = [h]
        for stage in self.down:
            for block in stage["blocks"]:
                h = block(h, emb)
                hs.append(h)
            if "attn" in stage:
                h = stage["attn"](h, text, pad)
            if "down" in stage:
                h = stage["down"](h)
                hs.append(h)
        h = self.mid1(h, emb)
        h = self.mid_attn(h, text, pad)
        h = self.mid2(h, emb)
        for stage in self.up:
            for block in stage["blocks"]:
                h = block(torch.cat([h, hs.pop()], dim=1), emb)
            if "attn" in stage:
                h = stage["attn"](h, text, pad)
            if "up" in stage:
                h = stage["up"](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        h = self.out(F.silu(self.out_norm(h)))
        h = F.pixel_shuffle(h, self.patch) if self.patch > 1 else h
        if self.out_skip:
            h = h + skip_scale(t, self.sigma_data).view(-1, 1, 1, 1).to(h.dtype) * x
        return h


def skip_scale(t: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """c(|t|) = (t - (1-t) s^2) / (t^2 + (1-t)^2 s^2): 1 at t = 1, -1 at t = 0 (see the module docstring)."""
    a, s2 = t.abs().float(), sigma_data**2
    return (a - (1 - a) * s2) / (a**2 + (1 - a) ** 2 * s2)


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
