"""ViT image encoder with timm's key names (so DeiT and ALBEF checkpoints load as they are)."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from albef_lab.config import VisionConfig
from albef_lab.models.attention import attend, merge_heads


class PatchEmbed(nn.Module):
    """One token per patch: a strided convolution (ViT), or with `cfg.conv_stem` a stack of 3x3 stride-2
    convolutions and a 1x1 one (the same tokens; shapes that straddle patches are seen whole)."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.stem = None
        if cfg.conv_stem:
            n = cfg.patch_size.bit_length() - 1
            if cfg.patch_size != 1 << n or n == 0:
                raise ValueError(f"a conv stem needs a patch_size that is a power of 2 above 1, not {cfg.patch_size}")
            widths = [3] + [max(cfg.width >> (n - 1 - i), 8) for i in range(n)]  # ..., width / 2, width
            layers: list[nn.Module] = []
            for c_in, c_out in itertools.pairwise(widths):
                layers += [nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1), nn.GELU()]
            self.stem = nn.Sequential(*layers)
            self.proj = nn.Conv2d(widths[-1], cfg.width, kernel_size=1)
        else:
            self.proj = nn.Conv2d(3, cfg.width, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x: Tensor) -> Tensor:
        if self.stem is not None:
            x = self.stem(x)
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, patches (row-major), width]


class Attention(nn.Module):
    attends = True  # albef_lab.models.attention.capture_attention can record its probabilities

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.qkv = nn.Linear(cfg.width, cfg.width * 3, bias=cfg.qkv_bias)
        self.proj = nn.Linear(cfg.width, cfg.width)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        return self.proj(merge_heads(attend(self, q, k, v, None, 0.0)))


class Mlp(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        hidden = int(cfg.width * cfg.mlp_ratio)
        self.fc1 = nn.Linear(cfg.width, hidden)
        self.fc2 = nn.Linear(hidden, cfg.width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self.mlp = Mlp(cfg)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """Returns every token after the final LayerNorm, CLS first: [B, 1 + patches, width]."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        if cfg.image_res % cfg.patch_size:
            raise ValueError(f"image_res {cfg.image_res} is not a multiple of patch_size {cfg.patch_size}")
        self.cfg = cfg
        num_patches = (cfg.image_res // cfg.patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, cfg.width))
        self.patch_embed = PatchEmbed(cfg)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self.grad_checkpointing = False
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.cfg.init_std
        nn.init.trunc_normal_(self.pos_embed, std=std)
        nn.init.trunc_normal_(self.cls_token, std=std)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, image: Tensor) -> Tensor:
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W], got {tuple(image.shape)}")
        x = self.patch_embed(image)
        if x.shape[1] + 1 > self.pos_embed.shape[1]:
            raise ValueError(
                f"image of {tuple(image.shape[-2:])} px gives {x.shape[1]} patches but the encoder "
                f"was built for {self.cfg.image_res} px ({self.pos_embed.shape[1] - 1} patches)")
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embed[:, : x.shape[1]]
        for block in self.blocks:
            if self.grad_checkpointing and x.requires_grad:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.norm(x)
