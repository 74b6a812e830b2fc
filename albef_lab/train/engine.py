"""Pre-training loop: one code path for a laptop core, one GPU, or many GPUs and nodes under torchrun.

Checkpoints hold everything a bit-exact resume needs (model with momentum weights and queues,
optimiser, scaler, step, epoch, position in the epoch, every RNG state of every rank).
"""

from __future__ import annotations

import json
import math
import random
import re
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from albef_lab.config import Config, DataConfig, model_config_from_dict, to_dict
from albef_lab.data.export import WorldSettings, write_world
from albef_lab.data.formats import resolve
from albef_lab.data.tokenizer import Tokenizer, load_tokenizer
from albef_lab.models.checkpoint import read_file, save_atomic
from albef_lab.train import distributed as D
from albef_lab.train.data import ResumableSampler, SeededDataset
from albef_lab.train.schedule import alpha_at, lr_at, param_groups, set_lr

CKPT = re.compile(r"checkpoint_(\d+)\.pth$")



def ensure_world(data: DataConfig, train: Path, progress: bool = True) -> None:
    """Generate ShapesWorld at `data.root` when the training file is absent (rank 0; others wait)."""
    if not train.is_file():
        if not data.make_world:
            raise FileNotFoundError(f"training annotations not found: {train} (and data.make_world is off)")
        if D.is_main_process():
            print(f"ShapesWorld not found at {data.root}: generating {data.world_images} images ...")
            write_world(WorldSettings(out=data.root, seed=data.world_seed, images=data.world_images,
                                      res=data.world_res, noise=data.noise), progress=progress)
    D.barrier()


def rng_state(gen: torch.Generator) -> dict:
    """Every RNG state as plain types and tensors, so checkpoints load with weights_only=True."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached": float(cached)}
    return {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "draws": gen.get_state()}


def set_rng_state(state: dict, gen: torch.Generator) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    gen.set_state(state["draws"])


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = sorted((int(m.group(1)), p) for p in Path(run_dir).glob("checkpoint_*.pth") if (m := CKPT.search(p.name)))
    return found[-1][1] if found else None


@dataclass
class RunState:
    epoch: int = 0
    step: int = 0  # optimiser steps taken
    batch_in_epoch: int = 0  # micro-batches of the current epoch already consumed
    best: float = -1.0
    history: list = field(default_factory=list)


class Trainer:
    """Builds everything from a Config and a task; `run()` trains, evaluates, checkpoints, returns metrics."""

    def __init__(self, cfg: Config, task: str = "pretrain", resume: str | None = None, init: str | None = None):
        from albef_lab.models.factory import create_model
        from albef_lab.train.tasks import DEFAULT_FILES, TASKS

        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; choose one of {sorted(TASKS)}")
        self.cfg = cfg
        t, d = cfg.train, cfg.data
        if t.threads:
            torch.set_num_threads(t.threads)
        if t.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"train.precision must be fp32, bf16 or fp16, got {t.precision!r}")
        self.device = D.setup(t.device)
        self.rank, self.world = D.rank(), D.world_size()
        self.main = self.rank == 0
        self.run_dir = Path(t.output_dir)

        files = DEFAULT_FILES.get(task, DEFAULT_FILES["pretrain"])
        ensure_world(d, resolve(d.root, d.train_file or files[0]), progress=t.progress and self.main)
        self.tokenizer: Tokenizer = load_tokenizer(d.tokenizer or Path(d.root) / "vocab")
        self._check_vocab()
        self.task = TASKS[task](cfg, self.tokenizer, self.run_dir if self.main else None)
        base = self.task.train_set()
        self.dataset = SeededDataset(base, t.seed)
        self.sampler = ResumableSampler(len(base), self.world, self.rank, shuffle=True, seed=t.seed)
        # whole accumulation groups only, so that every epoch ends on an optimiser step
        self.batches_per_epoch = self.sampler.per_rank // t.batch_size // t.grad_accum * t.grad_accum
        if self.batches_per_epoch < t.grad_accum or self.batches_per_epoch == 0:
            raise ValueError(f"{len(base)} training items give fewer than {t.grad_accum} batches of {t.batch_size}")
        self.steps_per_epoch = self.batches_per_epoch // t.grad_accum
        self.total_steps = t.max_steps or t.epochs * self.steps_per_epoch

        torch.manual_seed(t.seed + self.rank)
        random.seed(t.seed + self.rank)
        np.random.seed((t.seed + self.rank) % 2**32)
        self.gen = torch.Generator(device=self.device).manual_seed(t.seed + 1000 + self.rank)
        self.model = create_model(self.task.model_name, cfg.model).to(self.device)
        if hasattr(self.model, "image_queue"):
            global_batch = t.batch_size * self.world
            if cfg.model.queue_size % global_batch:
                raise ValueError(f"model.queue_size ({cfg.model.queue_size}) must be a multiple of the global batch "
                                 f"({t.batch_size} x {self.world} processes = {global_batch})")
        if init and not resume:
            self.initialise(init)
        self.optimizer = torch.optim.AdamW(param_groups(self.model, t.weight_decay), lr=t.lr)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=t.precision == "fp16")
        self.state = RunState()
        if resume:
            self.load(resume)
        m = cfg.model
        # objectives switched off, or text assignment (temp / projections unused), leave parameters without grad
        unused = not (m.use_itc and m.use_itm and m.use_mlm) or self.task.model_name == "pretrain_nlvr"
        self.ddp = DistributedDataParallel(
            self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
            broadcast_buffers=False, find_unused_parameters=unused) if self.world > 1 else None
        self.metrics_file = self.run_dir / "metrics.jsonl"
        self.tb = None
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=1))
            if t.tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                    self.tb = SummaryWriter(str(self.run_dir / "tb"))
                except ImportError:
                    print("tensorboard is not installed: `pip install tensorboard` to get its logs")

    def initialise(self, path: str) -> None:
        """Start from a pre-trained file (official or ours) with the original's key mapping for the task."""
        from albef_lab.models.checkpoint import init_from_pretrained, load_into, state_dict_of

        sd = state_dict_of(read_file(path), path)
        name = self.task.model_name
        if set(self.model.state_dict()) <= set(sd):  # already this model's layout (e.g. mscoco.pth)
            report = load_into(self.model, sd, strict=False, verbose=False)
        else:
            report = init_from_pretrained(self.model, name, sd, self.cfg.model.text.fusion_layer, verbose=False,
                                          fix_momentum_init=self.cfg.model.fix_momentum_init)
        if self.main:
            print(f"initialised {name} from {path}\n{report}")

    def _check_vocab(self) -> None:
        m, tok = self.cfg.model, self.tokenizer
        if tok.vocab_size > m.text.vocab_size:
            raise ValueError(f"tokenizer has {tok.vocab_size} tokens but model.text.vocab_size is {m.text.vocab_size}")
        m.cls_token_id, m.mask_token_id, m.sep_token_id = tok.cls_token_id, tok.mask_token_id, tok.sep_token_id
        m.text.pad_token_id = tok.pad_token_id

    # --- checkpoints -------------------------------------------------------------------------
    def checkpoint(self) -> dict:
        states = [None] * self.world
        mine = rng_state(self.gen)
        if self.world > 1:
            dist.all_gather_object(states, mine)
        else:
            states = [mine]
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "config": to_dict(self.cfg.model), "full_config": to_dict(self.cfg),
                "state": vars(self.state), "rng": states, "world_size": self.world,
                "model_name": self.task.model_name}

    def save(self, best: bool = False) -> Path | None:
        ckpt = self.checkpoint()  # every rank takes part in the gather
        if not self.main:
            return None
        path = self.run_dir / f"checkpoint_{self.state.step:07d}.pth"
        save_atomic(ckpt, path)
        if best:
            save_atomic(ckpt, self.run_dir / "best.pth")
        old = sorted(p for p in self.run_dir.glob("checkpoint_*.pth") if CKPT.search(p.name))
        for p in old[: max(0, len(old) - self.cfg.train.keep_last)]:
            p.unlink()
        return path

    def load(self, resume: str) -> None:
        path = latest_checkpoint(self.run_dir) if resume == "auto" else Path(resume)
        if path is None:
            if self.main:
                print(f"--resume auto: no checkpoint in {self.run_dir}, starting fresh")
            return
        ckpt = read_file(path)
        saved = model_config_from_dict(ckpt["config"])
        if saved != self.cfg.model:
            raise ValueError(f"{path} was written with another model config; resume with the same config")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.state = RunState(**ckpt["state"])
        if ckpt["world_size"] == self.world:
            set_rng_state(ckpt["rng"][self.rank], self.gen)
        elif self.main:
            print(f"resuming with {self.world} processes from a run with {ckpt['world_size']}: RNG streams restart")
        if self.main:
            print(f"resumed from {path} at step {self.state.step} (epoch {self.state.epoch}, "
                  f"batch {self.state.batch_in_epoch})")

    # --- the loop ---------------------------------------------------------------------------
    def autocast(self):
        t = self.cfg.train
        if t.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if t.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def log(self, record: dict) -> None:
        if not self.main:
            return
        with open(self.metrics_file, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, int | float) and k != "step":
                    self.tb.add_scalar(k, v, record["step"])

    def evaluate(self) -> dict:
        return self.task.evaluate(self.model, self.device)

    def run(self) -> dict:
        cfg, t = self.cfg, self.cfg.train
        st = self.state
        net = self.ddp or self.model
        self.model.train()
        t_start = time.perf_counter()
        bar = tqdm(total=self.total_steps, initial=st.step, desc="pretrain", unit="step",
                   disable=not (self.main and t.progress), dynamic_ncols=True)
        window: dict[str, float] = {}
        n_window, images_window, t_window = 0, 0, time.perf_counter()
        stop = st.step >= self.total_steps
        last_eval: dict = {}
        while not stop:
            self.sampler.set_epoch(st.epoch, st.batch_in_epoch * t.batch_size)
            self.dataset.set_epoch(st.epoch)
            loader = DataLoader(self.dataset, batch_size=t.batch_size, sampler=self.sampler, drop_last=True,
                                collate_fn=self.task.collate,
                                num_workers=cfg.data.num_workers, pin_memory=self.device.type == "cuda",
                                persistent_workers=False,  # its own generator: the global RNG stays untouched
                                generator=torch.Generator().manual_seed(t.seed + st.epoch))
            for batch in loader:
                i = st.batch_in_epoch
                alpha = alpha_at(st.epoch * self.batches_per_epoch + i, self.batches_per_epoch, cfg.model.alpha)
                if not cfg.model.distill:
                    alpha = 0.0
                last_micro = (i + 1) % t.grad_accum == 0
                sync = nullcontext() if (self.ddp is None or last_micro) else self.ddp.no_sync()
                with sync:
                    with self.autocast():
                        out = self.task.forward(net, batch, alpha, self.gen, self.device)
                    self.scaler.scale(out["loss"] / t.grad_accum).backward()
                st.batch_in_epoch += 1
                for k, v in out.items():
                    window[k] = window.get(k, 0.0) + v.item()
                n_window += 1
                images_window += t.batch_size * self.world
                if not last_micro:
                    continue
                lr = lr_at(st.step, self.total_steps, t.lr, t.min_lr, t.warmup_steps, t.warmup_lr)
                set_lr(self.optimizer, lr)
                if t.clip_grad > 0:
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.clip_grad)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                st.step += 1
                bar.update(1)
                if st.step % t.log_every == 0 or st.step == self.total_steps:
                    means = {k: v / n_window for k, v in window.items()}
                    if self.world > 1:
                        vec = torch.tensor([means[k] for k in sorted(means)], device=self.device)
                        dist.all_reduce(vec)
                        means = dict(zip(sorted(means), (vec / self.world).tolist(), strict=True))
                    ips = images_window / (time.perf_counter() - t_window)
                    rec = {"step": st.step, "epoch": st.epoch, **{k: round(v, 5) for k, v in means.items()},
                           "lr": lr, "alpha": alpha, "images_per_s": round(ips, 1),
                           "time_s": round(time.perf_counter() - t_start, 1)}
                    self.log(rec)
                    parts = {k.removeprefix("loss_"): f"{v:.3f}" for k, v in means.items()}
                    bar.set_postfix(**parts, lr=f"{lr:.1e}", alpha=f"{alpha:.2f}", img_s=f"{ips:.0f}")
                    window, n_window, images_window, t_window = {}, 0, 0, time.perf_counter()
                out_of_time = t.max_minutes > 0 and (time.perf_counter() - t_start) > 60 * t.max_minutes
                stop = st.step >= self.total_steps or out_of_time
                if st.batch_in_epoch >= self.batches_per_epoch:
                    st.epoch, st.batch_in_epoch = st.epoch + 1, 0
                    epoch_end = True
                else:
                    epoch_end = False
                do_eval = (t.eval_every and st.step % t.eval_every == 0) or (not t.eval_every and epoch_end) or stop
                do_save = (t.save_every and st.step % t.save_every == 0) or (not t.save_every and epoch_end) or stop
                best = False
                if do_eval:
                    if self.main:
                        last_eval = self.evaluate()
                        if last_eval:
                            self.log({"step": st.step, "epoch": st.epoch, **{f"val_{k}": round(v, 3)
                                                                            for k, v in last_eval.items()}})
                            score = last_eval[self.task.primary]
                            best = score > st.best
                            st.best = max(st.best, score)
                            shown = ", ".join(f"{k} {v:.1f}" for k, v in last_eval.items() if not k.startswith("itc_"))
                            bar.write(f"step {st.step}: val {shown}")
                    D.barrier()
                if do_save:
                    if self.world > 1:
                        flag = torch.tensor([int(best)], device=self.device)
                        dist.broadcast(flag, 0)
                        best = bool(flag.item())
                    self.save(best=best)
                if stop or epoch_end:
                    break
            if stop and out_of_time and self.main:
                bar.write(f"stopped after {t.max_minutes} minutes (train.max_minutes) at step {st.step}")
        bar.close()
        if self.main:
            from albef_lab.models.factory import save_model
            save_model(self.run_dir / "model.pth", self.model, cfg.model, self.task.model_name)
        if self.tb is not None:
            self.tb.close()
        return {"step": st.step, "epoch": st.epoch, "seconds": time.perf_counter() - t_start, **last_eval}


Pretrainer = Trainer  # the pre-training task is the default


def train(cfg: Config, task: str = "pretrain", resume: str | None = None, init: str | None = None) -> dict:
    trainer = Trainer(cfg, task, resume, init)
    try:
        return trainer.run()
    finally:
        D.cleanup()


def pretrain(cfg: Config, resume: str | None = None) -> dict:
    return train(cfg, "pretrain", resume)


def chance_recall(n_images: int, k: int = 1) -> float:
    """Text->image recall@k of a random ranking, in percent."""
    return 100.0 * min(1.0, k / n_images) if n_images else math.nan
