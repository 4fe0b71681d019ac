"""One-pass restorers (NAFNet-style), for Noise-DA, regression baselines and Cold Diffusion."""

from __future__ import annotations

import torch
from torch import nn

from irdiff.nets.layers import LayerNorm2d, NoiseLevelEmbedding, film, pad_to_multiple, to_memory_format_of


class SimpleGate(nn.Module):
    """Split channels in two halves and multiply them (NAFNet's activation-free nonlinearity)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return a * b


class NAFBlock(nn.Module):
    """NAFNet block: LayerNorm, 1x1 expand, depthwise 3x3, SimpleGate, simplified channel attention.

    With an embedding, the first normalised activations get a FiLM scale-shift. ``beta``/``gamma``
    start at zero as in NAFNet, so every block starts as the identity.
    """

    def __init__(self, channels: int, emb_dim: int | None = None, expand: int = 2, dropout: float = 0.0):
        super().__init__()
        c, dw = channels, channels * expand
        self.norm1 = LayerNorm2d(c)
        self.emb_proj = nn.Linear(emb_dim, 2 * c) if emb_dim else None
        self.conv1 = nn.Conv2d(c, dw, 1)
        self.conv2 = nn.Conv2d(dw, dw, 3, padding=1, groups=dw)
        self.gate = SimpleGate()
        self.sca = nn.Conv2d(dw // 2, dw // 2, 1)
        self.conv3 = nn.Conv2d(dw // 2, c, 1)
        self.norm2 = LayerNorm2d(c)
        self.conv4 = nn.Conv2d(c, 2 * c, 1)
        self.conv5 = nn.Conv2d(c, c, 1)
        self.dropout = nn.Dropout(dropout)
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm1(x)
        if self.emb_proj is not None and emb is not None:
            h = film(h, self.emb_proj(nn.functional.silu(emb)))
        h = self.gate(self.conv2(self.conv1(h)))
        h = h * self.sca(h.mean(dim=(2, 3), keepdim=True))
        y = x + self.dropout(self.conv3(h)) * self.beta.to(x.dtype)
        h = self.conv5(self.gate(self.conv4(self.norm2(y))))
        return y + self.dropout(h) * self.gamma.to(x.dtype)


class NAFNet(nn.Module):
    """NAFNet encoder-decoder. ``forward(x, noise_level=None, cond=None)``.

    With ``noise_level_dim > 0`` and a noise level given, the level is embedded and applied as FiLM
    in every block (a time-conditioned restorer, e.g. for Cold Diffusion); with ``noise_level_dim=0``
    the noise level is ignored. The output is the raw prediction (methods add any residual). Any H, W
    is accepted (reflect-padded to a multiple of unshuffle * 2**levels, cropped back).

    ``unshuffle`` r > 1 is FFDNet's front end: the input is pixel-unshuffled into r*r times the channels
    at 1/r the resolution, the net runs there (about r*r times fewer FLOPs per pixel for the same width)
    and the output is pixel-shuffled back. r = 1 (the default) is the plain net, with the same weights.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        noise_level_dim: int = 1,
        width: int = 32,
        enc_blocks: tuple[int, ...] = (1, 1, 1),
        middle_blocks: int = 1,
        dec_blocks: tuple[int, ...] = (1, 1, 1),
        dropout: float = 0.0,
        unshuffle: int = 1,
    ):
        super().__init__()
        enc_blocks, dec_blocks = tuple(enc_blocks), tuple(dec_blocks)
        if len(enc_blocks) != len(dec_blocks):
            raise ValueError(f"enc_blocks {enc_blocks} and dec_blocks {dec_blocks} need the same length")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.noise_level_dim = noise_level_dim
        if isinstance(unshuffle, bool) or not isinstance(unshuffle, int) or unshuffle < 1:
            raise ValueError(f"unshuffle must be a positive int (1 = off), got {unshuffle!r}")
        self.unshuffle = unshuffle
        self.multiple = unshuffle * 2 ** len(enc_blocks)

        emb_dim = 4 * width if noise_level_dim > 0 else None
        self.embed = NoiseLevelEmbedding(noise_level_dim, emb_dim) if emb_dim else None

        def blocks(ch, n):
            return nn.ModuleList([NAFBlock(ch, emb_dim, dropout=dropout) for _ in range(n)])

        r2 = unshuffle * unshuffle
        self.intro = nn.Conv2d(in_channels * r2, width, 3, padding=1)
        self.encoders, self.downs = nn.ModuleList(), nn.ModuleList()
        ch = width
        for n in enc_blocks:
            self.encoders.append(blocks(ch, n))
            self.downs.append(nn.Conv2d(ch, 2 * ch, 2, stride=2))
            ch *= 2
        self.middle = blocks(ch, middle_blocks)
        self.ups, self.decoders = nn.ModuleList(), nn.ModuleList()
        for n in dec_blocks:
            self.ups.append(nn.Sequential(nn.Conv2d(ch, 2 * ch, 1, bias=False), nn.PixelShuffle(2)))
            ch //= 2
            self.decoders.append(blocks(ch, n))
        self.ending = nn.Conv2d(width, out_channels * r2, 3, padding=1)

    @staticmethod
    def _run(blocks: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor | None) -> torch.Tensor:
        for block in blocks:
            h = block(h, emb)
        return h

    def forward(self, x: torch.Tensor, noise_level=None, cond: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, Cx, H, W), optional noise_level (B,) / (B, dim), cond (B, Cc, H, W) -> (B, out, H, W)."""
        h = x if cond is None else torch.cat([x, cond.to(x.dtype)], dim=1)
        if h.shape[1] != self.in_channels:
            raise ValueError(f"NAFNet expects {self.in_channels} input channels (x + cond), got {h.shape[1]}")
        emb = None
        if self.embed is not None and noise_level is not None:
            emb = self.embed(noise_level, h.shape[0], h.device)
        h = to_memory_format_of(h, self.intro.weight)
        h, (height, width) = pad_to_multiple(h, self.multiple)
        if self.unshuffle > 1:
            h = nn.functional.pixel_unshuffle(h, self.unshuffle)

        h = self.intro(h)
        skips = []
        for enc, down in zip(self.encoders, self.downs):
            h = self._run(enc, h, emb)
            skips.append(h)
            h = down(h)
        h = self._run(self.middle, h, emb)
        for up, dec in zip(self.ups, self.decoders):
            h = self._run(dec, up(h) + skips.pop(), emb)
        h = self.ending(h)
        if self.unshuffle > 1:
            h = nn.functional.pixel_shuffle(h, self.unshuffle)
        return h[:, :, :height, :width].to(x.dtype)
