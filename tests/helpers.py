import importlib.util
from pathlib import Path

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


# A tiny run of the engine: small widths, no workers, no progress bars, a log line every step.
SMALL = [
    "model.vision.image_res=32", "model.vision.patch_size=16", "model.vision.width=32", "model.vision.depth=1",
    "model.vision.num_heads=2", "model.text.hidden_size=32", "model.text.num_hidden_layers=2",
    "model.text.fusion_layer=1", "model.text.num_attention_heads=2", "model.text.intermediate_size=64",
    "model.text.encoder_width=32", "model.embed_dim=8", "model.queue_size=32", "train.batch_size=8",
    "data.num_workers=0", "train.progress=false", "train.log_every=1", "train.warmup_steps=2",
    "train.max_minutes=0", "model.text.hidden_dropout_prob=0.1",
    # the mechanics tests train everything from scratch (the tiny recipe's warm-up: test_vision_warmup)
    "model.vision.conv_stem=false", "shapesworld.warmup_minutes=0", "shapesworld.vision_lr_scale=1",
    "shapesworld.itm_finish_steps=0",  # the tiny recipe's last ITM step: tests/test_itm_finish.py
]


def small_cfg(world, out, *extra: str):
    from albef_lab.shapesworld import load_config

    return load_config(None, [*SMALL, f"data.root={world}", f"train.output_dir={out}", *extra], "tiny")


def make_world(out, images: int, seed: int):
    from albef_lab.shapesworld.export import WorldSettings, write_world

    write_world(WorldSettings(out=str(out), images=images, seed=seed, res=32, workers=1), progress=False)
    return out


def metric_rows(run) -> list[dict]:
    import json

    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_models(root):
    """A world and two briefly trained tiny models (pre-training, VQA) for the app's tests: seconds, not minutes."""
    from albef_lab.train.engine import train

    world = make_world(root / "world", images=40, seed=3)
    # two fusion layers: the Grad-CAM layer (the last but one) then has word maps
    small = ["model.decoder_layers=1", "model.text.num_hidden_layers=3"]
    train(small_cfg(world, root / "pre", "train.max_steps=2", *small))
    train(small_cfg(world, root / "vqa", "train.max_steps=1", *small, "data.k_test=4"), "vqa",
          init=str(root / "pre" / "model.pth"))
    return world, root / "pre" / "model.pth", root / "vqa" / "model.pth"


def serve_demo(root, files):
    """The app on briefly trained tiny models (`files`: the `demo_files` fixture), launched in this process on a free
    loopback port. Returns (workbench, app, url); call `app.close()` when done.
    """
    from albef_lab.demo import app_module, build_workbench

    world, pre, vqa = files
    wb = build_workbench([str(pre), str(vqa)], runs=str(root / "runs"), data=str(world), progress=False)
    app = app_module().build_app(wb)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, max_file_size="50mb",
               allowed_paths=[str(world)])
    return wb, app, f"http://127.0.0.1:{port}/"


def load_module(path: Path):
    """A script or benchmark of the repository (not a package) imported from its file, to call its functions."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
