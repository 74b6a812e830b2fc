import torch

from albef_lab.config import ModelConfig, TextConfig, VisionConfig


def small_config(**kw) -> ModelConfig:
    vision = VisionConfig(image_res=32, patch_size=16, width=32, depth=2, num_heads=2)
    text = TextConfig(vocab_size=120, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=32, fusion_layer=2, encoder_width=32,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    cfg = ModelConfig(vision=vision, text=text, embed_dim=8, queue_size=16, cls_token_id=101,
                      mask_token_id=103)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def batch(b: int = 4, length: int = 9, res: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(b, 3, res, res, generator=g)
    ids = torch.randint(104, 120, (b, length), generator=g)
    ids[:, 0] = 101
    mask = torch.ones(b, length, dtype=torch.long)
    for i in range(b):
        n = length - i
        ids[i, n:] = 0
        mask[i, n:] = 0
    return image, ids, mask
