"""The training loop: one code path for pre-training and every task, on a laptop core, one GPU, or many GPUs
and nodes under torchrun.

Checkpoints hold everything a bit-exact resume needs (model with momentum weights and queues, optimiser,
scaler, step, epoch, position in the epoch, the stages already run, every RNG state of every rank). A recipe adds
stages and its own task through `Config.plugins` (albef_lab/train/stages.py); the paper's run has none.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from albef_lab import distributed as D
from albef_lab.config import Config, model_config_from_dict, to_dict
from albef_lab.data.tokenizer import Tokenizer, load_tokenizer
from albef_lab.files import write_text_atomic
from albef_lab.models.checkpoint import load_bert, load_deit, load_for_task, read_file, save_atomic, state_dict_of
from albef_lab.models.factory import create_model, save_model
from albef_lab.train.data import ResumableSampler, SeededDataset
from albef_lab.train.schedule import adamw, alpha_at, lr_at, set_lr
from albef_lab.train.stages import Plugins
from albef_lab.train.tasks import task_class

CKPT = re.compile(r"checkpoint_(\d+)\.pth$")



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
    stages: dict = field(default_factory=dict)  # name -> record of each stage already run

    @staticmethod
    def from_dict(values: dict) -> RunState:
        values = dict(values)
        known = {f.name for f in dataclasses.fields(RunState)}
        # a flag an older version kept for a stage it had run (`flag: true`) becomes that stage's (empty) record
        for flag in [k for k in values if k not in known]:
            if values.pop(flag):
                values.setdefault("stages", {})[flag] = {}
        return RunState(**values)


class Trainer:
    """Builds everything from a Config and a task; `run()` trains, evaluates, checkpoints, returns metrics."""

    def __init__(self, cfg: Config, task: str = "pretrain", resume: str | None = None, init: str | None = None):
        self.cfg = cfg
        self.plugins: Plugins = cfg.plugins(task) or Plugins()
        self.task_cls = self.plugins.task or task_class(task)  # fails early on an unknown task name
        self.stage_seconds = 0.0  # time the stages run by this process took (it counts against train.max_minutes)
        self._setup_process()  # threads, precision, device, rank
        self._setup_data()  # the plugins' preparation, tokenizer, task, sampler, step counts
        self._setup_model(init, resume)  # seeds, model, the stages before training, optimiser, resumed state
        self._setup_outputs()  # DDP wrapper, metrics file, config.json, TensorBoard

    def _setup_process(self) -> None:
        t = self.cfg.train
        if t.threads:
            torch.set_num_threads(t.threads)
        if t.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"train.precision must be fp32, bf16 or fp16, got {t.precision!r}")
        self.device = D.setup(t.device)
        self.rank, self.world = D.rank(), D.world_size()
        self.main = self.rank == 0
        self.run_dir = Path(t.output_dir)
        self.metrics_file = self.run_dir / "metrics.jsonl"

    def _setup_data(self) -> None:
        t, d = self.cfg.train, self.cfg.data
        if self.plugins.prepare is not None:
            self.plugins.prepare(self)
        self.tokenizer: Tokenizer = load_tokenizer(d.tokenizer or Path(d.root) / "vocab")
        self._check_vocab()
        self.task = self.task_cls(self.cfg, self.tokenizer, self.run_dir if self.main else None)
        base = self.train_base = self.task.train_set()
        self.dataset = SeededDataset(base, t.seed)
        self.sampler = ResumableSampler(len(base), self.world, self.rank, shuffle=True, seed=t.seed)
        # whole accumulation groups only, so that every epoch ends on an optimiser step
        self.batches_per_epoch = self.sampler.per_rank // t.batch_size // t.grad_accum * t.grad_accum
        if self.batches_per_epoch < t.grad_accum or self.batches_per_epoch == 0:
            raise ValueError(f"{len(base)} training items give fewer than {t.grad_accum} batches of {t.batch_size}")
        self.steps_per_epoch = self.batches_per_epoch // t.grad_accum
        self.total_steps = t.max_steps or t.epochs * self.steps_per_epoch

    def _setup_model(self, init: str | None, resume: str | None) -> None:
        cfg, t = self.cfg, self.cfg.train
        torch.manual_seed(t.seed + self.rank)
        random.seed(t.seed + self.rank)
        np.random.seed((t.seed + self.rank) % 2**32)
        self.gen = torch.Generator(device=self.device).manual_seed(t.seed + 1000 + self.rank)
        self.model = create_model(self.task.name, cfg.model).to(self.device)
        if hasattr(self.model, "image_queue"):
            global_batch = t.batch_size * self.world
            if cfg.model.queue_size % global_batch:
                raise ValueError(f"model.queue_size ({cfg.model.queue_size}) must be a multiple of the global batch "
                                 f"({t.batch_size} x {self.world} processes = {global_batch})")
        self.state = RunState()
        resume_from = self._resume_path(resume)  # None: a fresh start (`--resume auto` in an empty folder too)
        if resume_from is None:
            self.initialise(init)
            for stage in self.stages(before=True):
                self.run_stage(stage)
        for name, p in self.model.named_parameters():  # left out of the optimiser; a momentum copy stays equal
            if name.startswith(self.plugins.frozen):
                p.requires_grad_(False)
        self.optimizer = adamw(self.model, t.lr, t.weight_decay, fused=t.fused_adamw, lr_scales=self.plugins.lr_scales)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=t.precision == "fp16")
        if resume_from is not None:
            self.load(resume_from)

    def _setup_outputs(self) -> None:
        m = self.cfg.model
        # objectives switched off, or text assignment (temp / projections unused), leave parameters without grad
        unused = not (m.use_itc and m.use_itm and m.use_mlm) or self.task.name == "pretrain_nlvr"
        self.ddp = DistributedDataParallel(
            self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
            broadcast_buffers=False, find_unused_parameters=unused) if self.world > 1 else None
        if self.world > 1:  # rank 0's queues everywhere, once, as the original's DDP (broadcast_buffers) makes them:
            for buf in self.model.buffers():  # each rank drew its own at init, and a resume loads rank 0's
                dist.broadcast(buf, src=0)
        self.tb = None
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._truncate_metrics(self.state.step)  # a fresh run (step 0) in a used folder starts a fresh log
            write_text_atomic(self.run_dir / "config.json", json.dumps(to_dict(self.cfg), indent=1))
            for name, record in self.state.stages.items():
                write_text_atomic(self.run_dir / f"{name}.json", json.dumps(record, indent=1))
            if self.cfg.train.tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                    self.tb = SummaryWriter(str(self.run_dir / "tb"))
                except ImportError:
                    print("tensorboard is not installed: `pip install tensorboard` to get its logs")

    def initialise(self, init: str | None) -> None:
        """Start from the given file (official or ours, mapped for the task as the original does), else from
        the config's own initialisation files (`model.init_vision`: DeiT / timm ViT, `model.init_text`: BERT)."""
        m = self.cfg.model
        if init:
            report = load_for_task(self.model, self.task.name, state_dict_of(read_file(init), init),
                                   fusion_layer=m.text.fusion_layer, fix_momentum_init=m.fix_momentum_init)
            if self.main:
                print(f"initialised {self.task.name} from {init}\n{report}")
            return
        if m.init_vision:
            report = load_deit(self.model.visual_encoder, m.init_vision, verbose=False)
            if self.main:
                print(f"initialised the image encoder from {m.init_vision}\n{report}")
        if m.init_text:
            report = load_bert(self.model.text_encoder, m.init_text, verbose=False)
            if self.main:
                print(f"initialised the text encoder from {m.init_text}\n{report}")
        if (m.init_vision or m.init_text) and hasattr(self.model, "copy_params"):
            self.model.copy_params()  # the momentum copies start from the loaded weights, as in the original

    # --- stages ------------------------------------------------------------------------------
    def stages(self, before: bool) -> list:
        """The plugins' stages before (or after) the main loop that this run has not run yet."""
        done = self.state.stages
        return [s for s in self.plugins.stages
                if s.before == before and s.name not in done and getattr(s, "old_flag", None) not in done]

    def run_stage(self, stage) -> None:
        """Run a stage with what is left of the clock; its record goes into the run state (and checkpoints)."""
        t = self.cfg.train
        left = 60 * t.max_minutes - self.seconds_used() if t.max_minutes else None
        t0 = time.perf_counter()
        record = stage.run(self, left)
        self.stage_seconds += time.perf_counter() - t0
        self.state.stages[stage.name] = record

    def kept_minutes(self) -> float:
        """Of `train.max_minutes`, the minutes the main loop leaves to the stages after it."""
        return sum(s.kept_minutes for s in self.stages(before=False)) if self.cfg.train.max_minutes else 0.0

    def seconds_used(self) -> float:
        """Of `train.max_minutes`: the training so far and the stages this process ran."""
        start = getattr(self, "t_start", None)
        return (time.perf_counter() - start if start is not None else 0.0) + self.stage_seconds

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
                "state": vars(self.state), "rng": states, "world_size": self.world, "model_name": self.task.name}

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

    def _resume_path(self, resume: str | None) -> Path | None:
        if not resume:
            return None
        path = latest_checkpoint(self.run_dir) if resume == "auto" else Path(resume)
        if path is None and self.main:
            print(f"--resume auto: no checkpoint in {self.run_dir}, starting fresh")
        return path

    def load(self, path: Path) -> None:
        ckpt = read_file(path)
        saved = model_config_from_dict(ckpt["config"])
        if saved != self.cfg.model:
            raise ValueError(f"{path} was written with another model config; resume with the same config")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.state = RunState.from_dict(ckpt["state"])
        if ckpt["world_size"] == self.world:
            set_rng_state(ckpt["rng"][self.rank], self.gen)
        elif self.main:
            print(f"resuming with {self.world} processes from a run with {ckpt['world_size']}: RNG streams restart")
        if self.main:
            print(f"resumed from {path} at step {self.state.step} (epoch {self.state.epoch}, "
                  f"batch {self.state.batch_in_epoch})")

    def _truncate_metrics(self, step: int) -> None:
        """Drop log rows written after the step this run starts from (they will be written again); for a fresh
        run, every row of an earlier run in the same folder."""
        if not self.metrics_file.is_file():
            return
        rows = self.metrics_file.read_text().splitlines()
        kept = [r for r in rows if r.strip() and json.loads(r).get("step", 0) <= step]
        write_text_atomic(self.metrics_file, "".join(r + "\n" for r in kept))

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
        t, st = self.cfg.train, self.state
        self.model.train()
        self.t_start = time.perf_counter()
        self.bar = tqdm(total=self.total_steps, initial=st.step, desc=self.task.name, unit="step",
                        disable=not (self.main and t.progress), dynamic_ncols=True)
        meter = Meter()
        stop = st.step >= self.total_steps
        out_of_time, last_eval = False, {}
        while not stop:
            for batch in self._epoch_loader():
                # one micro-batch: forward and backward (gradients sync on the last of an accumulation group)
                alpha = self._alpha()
                last_micro = (st.batch_in_epoch + 1) % t.grad_accum == 0
                out = self._forward_backward(batch, alpha, sync=last_micro)
                st.batch_in_epoch += 1
                meter.add(out, t.batch_size * self.world)
                if not last_micro:
                    continue
                # one optimiser step, then the bookkeeping that follows it
                lr = self._optimizer_step()
                if st.step % t.log_every == 0 or st.step == self.total_steps:
                    self._log_window(meter, lr, alpha)
                out_of_time = t.max_minutes > 0 and self.seconds_used() > 60 * (t.max_minutes - self.kept_minutes())
                stop = st.step >= self.total_steps or out_of_time
                epoch_end = self._advance_epoch()
                best = False
                if self._due(t.eval_every, epoch_end, stop):
                    last_eval, best = self._evaluate_and_log(last_eval)
                if self._due(t.save_every, epoch_end, stop):
                    self.save(best=self._agree(best))
                if stop or epoch_end:
                    break
        if out_of_time and self.main:
            kept = self.kept_minutes()
            also = f", of which {kept:g} are kept for {', '.join(s.name for s in self.stages(False))}" if kept else ""
            self.bar.write(f"stopped at step {st.step} by the clock: train.max_minutes={t.max_minutes:g}{also}")
        for stage in self.stages(before=False):
            last_eval = self.after_stage(stage, last_eval)
        return self._finish(last_eval)

    def after_stage(self, stage, last_eval: dict) -> dict:
        """A stage after the main loop, then an evaluation and a checkpoint of what it made (skipped, and said,
        when the clock has nothing left for it)."""
        t = self.cfg.train
        if t.max_minutes and 60 * t.max_minutes - self.seconds_used() <= 0:
            if self.main:
                self.bar.write(f"no time left of train.max_minutes={t.max_minutes:g} for stage {stage.name}")
            return last_eval
        self.run_stage(stage)
        record = self.state.stages[stage.name]
        self.log({"step": self.state.step, "epoch": self.state.epoch,
                  **{f"{stage.name}_{k}": v for k, v in record.items() if isinstance(v, int | float)}})
        last_eval, _ = self._evaluate_and_log(last_eval)
        best = self.main and bool(last_eval) and last_eval[self.task.primary] >= self.state.best
        self.save(best=self._agree(best))
        return last_eval

    def _epoch_loader(self) -> DataLoader:
        """This epoch's batches, from where the run stands in it (bit-exact after a resume)."""
        t, st = self.cfg.train, self.state
        self.sampler.set_epoch(st.epoch, st.batch_in_epoch * t.batch_size)
        self.dataset.set_epoch(st.epoch)
        return DataLoader(self.dataset, batch_size=t.batch_size, sampler=self.sampler, drop_last=True,
                          collate_fn=self.task.collate, num_workers=self.cfg.data.num_workers,
                          pin_memory=self.device.type == "cuda",
                          persistent_workers=False,  # its own generator: the global RNG stays untouched
                          generator=torch.Generator().manual_seed(t.seed + st.epoch))

    def _alpha(self) -> float:
        st, m = self.state, self.cfg.model
        if not m.distill:
            return 0.0
        return alpha_at(st.epoch * self.batches_per_epoch + st.batch_in_epoch, self.batches_per_epoch, m.alpha)

    def _forward_backward(self, batch, alpha: float, sync: bool) -> dict[str, Tensor]:
        no_sync = nullcontext() if (self.ddp is None or sync) else self.ddp.no_sync()
        with no_sync:
            with self.autocast():
                out = self.task.forward(self.ddp or self.model, batch, alpha, self.gen, self.device)
            self.scaler.scale(out["loss"] / self.cfg.train.grad_accum).backward()
        return out

    def _optimizer_step(self) -> float:
        t, st = self.cfg.train, self.state
        lr = lr_at(st.step, self.total_steps, t.lr, t.min_lr, t.warmup_steps, t.warmup_lr)
        set_lr(self.optimizer, lr)
        if t.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        st.step += 1
        self.bar.update(1)
        return lr

    def _log_window(self, meter: Meter, lr: float, alpha: float) -> None:
        """Mean losses since the last log line (averaged over processes), lr, alpha, throughput."""
        st = self.state
        means = meter.means()
        if self.world > 1:
            vec = torch.tensor([means[k] for k in sorted(means)], device=self.device)
            dist.all_reduce(vec)
            means = dict(zip(sorted(means), (vec / self.world).tolist(), strict=True))
        ips = meter.images_per_s()
        self.log({"step": st.step, "epoch": st.epoch, **{k: round(v, 5) for k, v in means.items()}, "lr": lr,
                  "alpha": alpha, "images_per_s": round(ips, 1),
                  "time_s": round(time.perf_counter() - self.t_start, 1)})
        parts = {k.removeprefix("loss_"): f"{v:.3f}" for k, v in means.items()}
        self.bar.set_postfix(**parts, lr=f"{lr:.1e}", alpha=f"{alpha:.2f}", img_s=f"{ips:.0f}")
        meter.reset()

    def _advance_epoch(self) -> bool:
        st = self.state
        if st.batch_in_epoch < self.batches_per_epoch:
            return False
        st.epoch, st.batch_in_epoch = st.epoch + 1, 0
        return True

    def _due(self, every: int, epoch_end: bool, stop: bool) -> bool:
        """Every `every` steps, or at each epoch's end when `every` is 0; always at the last step."""
        return bool((every and self.state.step % every == 0) or (not every and epoch_end) or stop)

    def _evaluate_and_log(self, last_eval: dict) -> tuple[dict, bool]:
        """Evaluate on rank 0; returns (metrics, whether this is the best checkpoint so far)."""
        st, best = self.state, False
        if self.main:
            metrics = self.evaluate()
            if metrics:
                last_eval = metrics
                self.log({"step": st.step, "epoch": st.epoch, **{f"val_{k}": round(v, 3) for k, v in metrics.items()}})
                score = metrics[self.task.primary]
                best, st.best = score > st.best, max(st.best, score)
                shown = ", ".join(f"{k} {v:.1f}" for k, v in metrics.items() if not k.startswith("itc_"))
                self.bar.write(f"step {st.step}: val {shown}")
        D.barrier()
        return last_eval, best

    def _agree(self, flag: bool) -> bool:
        """Rank 0's value of `flag` on every rank."""
        if self.world == 1:
            return flag
        t = torch.tensor([int(flag)], device=self.device)
        dist.broadcast(t, 0)
        return bool(t.item())

    def _finish(self, last_eval: dict) -> dict:
        self.bar.close()
        if self.main:
            save_model(self.run_dir / "model.pth", self.model, self.cfg.model, self.task.name)
        if self.tb is not None:
            self.tb.close()
        st, cuts = self.state, self.clock_cuts()
        if cuts and self.main:
            print(clock_cut_warning(cuts, [s.every_step() for s in self.plugins.stages if s.name in cuts]))
        return {"step": st.step, "epoch": st.epoch, "seconds": time.perf_counter() - self.t_start, **last_eval,
                **{name: record for name, record in st.stages.items() if record},
                **({"clock_cuts": cuts} if cuts else {})}

    def clock_cuts(self) -> dict[str, list[int]]:
        """The main loop and the stages a clock stopped before their steps, as [steps made, steps asked]. A budget's
        minutes were timed on one machine; on a slower one the same command makes fewer steps and a weaker model."""
        st, cuts = self.state, {}
        if st.step < self.total_steps:
            cuts[self.task.name] = [st.step, self.total_steps]
        for stage in self.plugins.stages:
            record = st.stages.get(stage.name)
            asked = getattr(stage, "asked", 0)
            if record is None and asked:  # never run: no time was left for it
                cuts[stage.name] = [0, asked]
            elif record and record.get("steps", asked) < record.get("asked", asked):
                cuts[stage.name] = [record["steps"], record["asked"]]
        return cuts


def clock_cut_warning(cuts: dict[str, list[int]], every_step: list[str]) -> str:
    """What the clock cut, and the overrides that run every step whatever the time (more minutes on a slower
    machine, the same steps as on a fast one)."""
    made = ", ".join(f"{stage} {done} of {asked} steps" for stage, (done, asked) in cuts.items())
    fix = " ".join(dict.fromkeys(["train.max_minutes=0", *(o for o in every_step if o)]))
    return (f"warning: the clock stopped {made}, so the model is weaker than a full run's (the budget's minutes "
            f"were set on a machine that makes its steps in time; a slower one does not). {fix} runs every step, "
            f"however long it takes.")


class Meter:
    """Sums of the step's outputs since the last reset, and the images seen (for throughput)."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.n, self.images, self.t0 = 0, 0, time.perf_counter()

    def add(self, out: dict[str, Tensor], images: int) -> None:
        for k, v in out.items():  # summed where they live: no device sync per step, one per log line
            self.sums[k] = self.sums[k] + v.detach().float() if k in self.sums else v.detach().float()
        self.n += 1
        self.images += images

    def means(self) -> dict[str, float]:
        if not self.sums:
            return {}
        keys = sorted(self.sums)
        values = (torch.stack([self.sums[k] for k in keys]) / self.n).tolist()
        return dict(zip(keys, values, strict=True))

    def images_per_s(self) -> float:
        return self.images / (time.perf_counter() - self.t0)


def train(cfg: Config, task: str = "pretrain", resume: str | None = None, init: str | None = None) -> dict:
    trainer = Trainer(cfg, task, resume, init)
    try:
        return trainer.run()
    finally:
        D.cleanup()


def pretrain(cfg: Config, resume: str | None = None) -> dict:
    return train(cfg, "pretrain", resume)


def evaluate(cfg: Config, task: str, checkpoint: str | Path, blind: str = "", out_dir: str | Path | None = None,
             verbose: bool = False) -> dict:
    """A task's evaluation of a checkpoint; `blind` runs a control: "shuffle" / "blank" the image-blind one,
    "text" grounding's text-blind one.

    Ours carry their architecture (`cfg.model` is replaced by it); an official file is built from `cfg.model`.
    """
    from albef_lab.models.factory import load_model

    # an official file is built from `cfg.model` as it is (its image size too: a resized position table is warned of)
    model, cfg.model, report = load_model(checkpoint, task, arch=cfg.model, infer_image_size=False)
    if verbose:
        print(report)
        if report.resized:
            print(f"warning: the checkpoint was trained at another image size; its position embeddings were "
                  f"resized to {cfg.model.vision.image_res} px, which costs accuracy without fine-tuning",
                  file=sys.stderr)
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.train.device != "cpu" else "cpu")
    tok = load_tokenizer(cfg.data.tokenizer or f"{cfg.data.root}/vocab")
    plugins = cfg.plugins(task) or Plugins()
    runner = (plugins.task or task_class(task))(cfg, tok, out_dir if out_dir is not None else Path(checkpoint).parent,
                                                blind=blind)
    return runner.evaluate(model.to(device), device)
