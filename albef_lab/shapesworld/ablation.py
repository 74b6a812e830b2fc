"""The paper's Table 1 on ShapesWorld: one run of one variant, the sweep over variants x noise x seeds, the summary.

A run pre-trains a variant, fine-tunes every downstream task from it with a fixed budget and writes a
`results.json` (the paper's columns plus grounding, each beside its baseline). The sweep executes
`notebooks/02_distillation_ablations.ipynb` once per run with papermill, so every run leaves an executed
notebook to read; the notebook itself calls `run_variant`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import statistics
import time
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from albef_lab.data.formats import resolve
from albef_lab.files import write_text_atomic
from albef_lab.models.registry import task_spec
from albef_lab.shapesworld.config import RecipeConfig, tiny, with_overrides


@dataclass(frozen=True)
class Variant:
    """A row of Table 1: config overrides for pre-training and for fine-tuning."""

    row: str  # the paper's name of the row
    pretrain: tuple[str, ...]
    finetune: tuple[str, ...] = ("model.distill=false",)


VARIANTS: dict[str, Variant] = {
    "mlm_itm": Variant("MLM + ITM", ("model.use_itc=false", "model.hard_negatives=false", "model.distill=false")),
    "itc": Variant("+ ITC", ("model.hard_negatives=false", "model.distill=false")),
    "itc_hardneg": Variant("+ ITM hard negatives", ("model.distill=false",)),
    "itc_mod": Variant("+ MoD on ITC", ("model.distill=true", "model.distill_mlm=false")),
    "full": Variant("+ MoD on ITC and MLM (full)", ("model.distill=true",)),
    "full_mod_ft": Variant("full + MoD in fine-tuning", ("model.distill=true",), ("model.distill=true",)),
}

# the paper's columns (and grounding): task -> (column, metric key in the task's evaluation)
COLUMNS: dict[str, tuple[str, str]] = {
    "TR": ("retrieval", "txt_r_mean"),  # image -> text, mean of R@1/5/10
    "IR": ("retrieval", "img_r_mean"),
    "SNLI-VE": ("ve", "acc"),
    "NLVR2": ("nlvr", "acc"),
    "VQA": ("vqa", "vqa_acc"),
    "grounding": ("grounding", "acc_all"),
}
ROW_NAMES = {"blind": "blind control (every run: images shuffled; grounding: another object's words)",
             "baseline": "baseline (chance / majority / a random object)"}
TASKS = ("retrieval", "ve", "nlvr", "vqa", "grounding")
NOTEBOOK = "notebooks/02_distillation_ablations.ipynb"


@dataclass
class Budget:
    """How much each run trains; the defaults fit the 36 runs of Table 1 into about an hour on 2 CPU cores
    (2 runs at a time). 200 pre-training steps: the tiny recipe's ITM head leaves its constant guess at ~150."""

    world_images: int = 1500
    # the tiny recipe's image encoder: warmed up on the scene graphs (once per seed, shared by every variant and
    # noise level), frozen in pre-training, fine-tuned at the preset's share of the lr. 0 = the image encoder
    # trained from scratch with the rest (docs/ablation_scratch_encoder.md)
    warmup_steps: int = 600
    pretrain_steps: int = 200
    finetune_steps: int = 40
    batch_size: int = 64
    finetune_batch_size: int = 32
    k_test: int = 16
    threads: int = 0  # torch threads per run; 0 = torch's default (a sweep of `jobs` runs sets its share)

    @classmethod
    def quick(cls) -> Budget:
        """Seconds, for tests: a small world and a handful of steps."""
        return cls(world_images=200, warmup_steps=3, pretrain_steps=6, finetune_steps=3, batch_size=16,
                   finetune_batch_size=8, k_test=4, threads=0)


def world_root(root: str | Path, noise: float, budget: Budget) -> Path:
    return Path(root) / f"world_{budget.world_images}_noise{noise:g}"


def make_world(root: str | Path, noise: float, budget: Budget, progress: bool = False) -> Path:
    """The ShapesWorld of one noise level (generated once, shared by every run at that level)."""
    from albef_lab.shapesworld.recipe import make_world as make

    cfg = tiny()
    cfg.data.root = str(world_root(root, noise, budget))
    cfg.shapesworld.world.images, cfg.shapesworld.world.noise = budget.world_images, noise
    with _locked(Path(cfg.data.root).with_suffix(".lock")):
        return make(cfg, progress=progress)


def _config(data: Path, out: Path, steps: int, batch: int, seed: int, budget: Budget, extra: list[str],
            progress: bool) -> RecipeConfig:
    """The tiny preset for one stage of a run; `extra` (`key=value`, a user's or a variant's) last."""
    cfg = tiny()
    cfg.data.root, cfg.data.k_test, cfg.data.num_workers = str(data), budget.k_test, 0
    t = cfg.train
    t.output_dir, t.max_steps, t.eval_every, t.save_every, t.max_minutes = str(out), steps, steps, steps, 0.0
    t.batch_size, t.seed, t.threads, t.progress = batch, seed, budget.threads, progress
    sw = cfg.shapesworld
    sw.itm_finish_steps = 0  # Table 1 compares the paper's objectives; the recipe's last ITM step is not one
    sw.warmup_minutes = 0.0  # the seed's encoder is warmed up once (`warmed_encoder`), not per run
    if budget.warmup_steps == 0:  # the first Table 1's encoder (docs/ablation_scratch_encoder.md): a ViT trained
        cfg.model.vision.conv_stem, sw.vision_lr_scale = False, 1.0  # from scratch at the one lr of the rest
    sw.grounding_vision_lr_scale = sw.vision_lr_scale  # every column at one rate, as Table 1 was first measured
    return with_overrides(cfg, extra)


def warmed_encoder(noise: float, seed: int, root: str | Path, budget: Budget, extra: list[str] | None = None,
                   progress: bool = False) -> tuple[Path, dict]:
    """The image encoder of a seed, warmed up once and shared by every variant and noise level of that seed (noise
    changes captions only; the warm-up reads images and scene graphs). Returns (its file, the warm-up's record)."""
    import torch

    from albef_lab.shapesworld.warmup import warm_up_to_file, warmup_config

    data = make_world(root, noise, budget)
    cfg = _config(data, Path(root), budget.warmup_steps, budget.batch_size, seed, budget, list(extra or []), progress)
    t = cfg.train
    wcfg = warmup_config(cfg.shapesworld, t, minutes=0, steps=budget.warmup_steps, max_steps=0,
                         batch_size=budget.batch_size, seed=seed, progress=progress)
    what = {k: v for k, v in asdict(wcfg).items() if k != "progress"}
    key = hashlib.sha1(json.dumps([asdict(cfg.model.vision), what, budget.world_images],
                                  sort_keys=True).encode()).hexdigest()[:8]
    path = Path(root) / "warmup" / f"vit_seed{seed}_{key}.pth"
    with _locked(path.with_suffix(".lock")):
        if not path.is_file():
            if t.threads:
                torch.set_num_threads(t.threads)
            warm_up_to_file(cfg.model.vision, data, path, wcfg)
        return path, torch.load(path, map_location="cpu", weights_only=True)["warmup"]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on a file: two runs side by side never build the same thing twice."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def pretrain_variant(variant: str, noise: float, seed: int, root: str | Path, budget: Budget,
                     extra: list[str] | None = None, progress: bool = False) -> tuple[Path, dict]:
    """Pre-train a variant once per (pre-training recipe, noise, seed); rows sharing a recipe share the model.
    With `budget.warmup_steps`, the image encoder is the seed's warmed-up one (`warmed_encoder`), kept frozen.

    Returns (the checkpoint, its held-out zero-shot metrics).
    """
    from albef_lab.train.engine import pretrain

    v = VARIANTS[variant]
    recipe = next(name for name, o in VARIANTS.items() if o.pretrain == v.pretrain)  # the first row with it
    key = hashlib.sha1(json.dumps([v.pretrain, asdict(budget), extra or []]).encode()).hexdigest()[:8]
    out = Path(root) / "pretrain" / f"{recipe}_noise{noise:g}_seed{seed}_{key}"
    with _locked(out.with_suffix(".lock")):
        done = out / "result.json"
        if not done.is_file():
            data = make_world(root, noise, budget)
            encoder = []
            if budget.warmup_steps:  # the seed's warmed-up encoder, frozen, as the tiny recipe's pre-training
                vit, warmup = warmed_encoder(noise, seed, root, budget, extra, progress)
                encoder = [f"model.init_vision={vit}", "shapesworld.freeze_vision=true"]
            cfg = _config(data, out, budget.pretrain_steps, budget.batch_size, seed, budget,
                          [*v.pretrain, *encoder, *(extra or [])], progress)
            result = pretrain(cfg)
            if budget.warmup_steps:
                result["vision_warmup"] = {"file": str(vit), **warmup}
            _write_json(done, result)
        return out / "model.pth", json.loads(done.read_text())


def finetune_tasks(checkpoint: Path, variant: str, noise: float, seed: int, out: str | Path, root: str | Path,
                   budget: Budget, tasks: tuple[str, ...] = TASKS, extra: list[str] | None = None,
                   progress: bool = False) -> dict[str, dict]:
    """Fine-tune and evaluate each task from the checkpoint: {task: its final evaluation}.

    Each evaluation also holds 'blind': the same fine-tuned model evaluated with the images shuffled across
    examples (grounding: with another object's words, `blind="text"`).
    """
    from albef_lab.train.engine import evaluate, train

    data = make_world(root, noise, budget)
    results = {}
    for task in tasks:
        cfg = _config(data, Path(out) / task, budget.finetune_steps, budget.finetune_batch_size, seed, budget,
                      ["train.lr=2e-4", "train.warmup_steps=10", "model.fix_momentum_init=true",
                       *VARIANTS[variant].finetune, *(extra or [])], progress)
        results[task] = train(cfg, task, init=str(checkpoint))
        blind = "text" if task == "grounding" else "shuffle"
        results[task]["blind"] = evaluate(cfg, task, Path(cfg.train.output_dir) / "model.pth", blind=blind)
    return results


def baselines(data: Path, results: dict[str, dict]) -> dict[str, float]:
    """What each column scores without looking: chance, the majority answer or class, a random object's box (a
    map that finds objects but ignores the words; above a random proposal)."""
    from albef_lab.eval.grounding import random_object_baseline
    from albef_lab.eval.retrieval import chance_recall

    out = {}
    if "retrieval" in results:
        n = results["retrieval"]["n_images"]
        out["TR"] = out["IR"] = sum(chance_recall(n, k) for k in (1, 5, 10)) / 3
    if "ve" in results:
        out["SNLI-VE"] = results["ve"]["majority_class_acc"]
    if "nlvr" in results:
        out["NLVR2"] = results["nlvr"]["majority_class_acc"]
    if "vqa" in results:
        out["VQA"] = results["vqa"]["majority_answer_acc"]
    if "grounding" in results:
        out["grounding"] = random_object_baseline(resolve(data, task_spec("grounding").files[1]),
                                                  data / "refcoco+")["acc_all"]
    return out


def run_variant(variant: str, noise: float, seed: int, out: str | Path, root: str | Path = "runs/ablations",
                budget: Budget | None = None, tasks: tuple[str, ...] = TASKS, extra: list[str] | None = None,
                progress: bool = False) -> dict:
    """One run of Table 1: pre-train (or reuse), fine-tune every task, write `out/results.json`; returns it."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {list(VARIANTS)}")
    budget = budget or Budget()
    t0 = time.perf_counter()
    checkpoint, zero_shot = pretrain_variant(variant, noise, seed, root, budget, extra, progress)
    downstream = finetune_tasks(checkpoint, variant, noise, seed, out, root, budget, tasks, extra, progress)
    scores = {col: downstream[task][key] for col, (task, key) in COLUMNS.items() if task in downstream}
    blind = {col: downstream[task]["blind"][key] for col, (task, key) in COLUMNS.items()
             if "blind" in downstream.get(task, {})}
    result = {"variant": variant, "row": VARIANTS[variant].row, "noise": noise, "seed": seed,
              "scores": scores, "blind": blind, "baselines": baselines(world_root(root, noise, budget), downstream),
              "zero_shot": {k: zero_shot[k] for k in ("txt_r1", "img_r1", "r_mean", "itm_acc", "itm_acc_hard")
                            if k in zero_shot},
              "vision_warmup": zero_shot.get("vision_warmup"),
              "downstream": downstream, "budget": asdict(budget), "pretrain_checkpoint": str(checkpoint),
              "seconds": time.perf_counter() - t0}
    _write_json(Path(out) / "results.json", result)
    return result


def _write_json(path: Path, obj) -> None:
    """A killed run never leaves a half-written result that looks finished."""
    write_text_atomic(path, json.dumps(obj, indent=1))


# --- the sweep ------------------------------------------------------------------------------------
@dataclass
class Run:
    variant: str
    noise: float
    seed: int

    @property
    def name(self) -> str:
        return f"{self.variant}_noise{self.noise:g}_seed{self.seed}"


@dataclass
class SweepReport:
    done: list[str] = field(default_factory=list)  # executed now
    skipped: list[str] = field(default_factory=list)  # finished by an earlier sweep
    failed: dict[str, str] = field(default_factory=dict)  # name -> the error


def grid(variants: list[str], noises: list[float], seeds: list[int]) -> list[Run]:
    """Every (variant, noise, seed); variants sharing a pre-training are kept apart in the order, so that two
    runs side by side do not wait on the same pre-training."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    order = sorted(variants, key=lambda v: (v != "full", list(VARIANTS).index(v)))
    if "full_mod_ft" in order and "full" in order:
        order.remove("full_mod_ft")
        order.append("full_mod_ft")
    return [Run(v, n, s) for s in seeds for n in noises for v in order]


def _execute(notebook: str, run: Run, out: str, root: str, quick: bool, extra: list[str],
             warmup_steps: int) -> tuple[str, str | None]:
    """Execute the notebook for one run; (name, None) or (name, the error)."""
    import papermill as pm

    run_dir = Path(out) / "runs" / run.name
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        pm.execute_notebook(notebook, str(run_dir / "executed.ipynb"), kernel_name="python3", progress_bar=False,
                            cwd=os.getcwd(), parameters={"variant": run.variant, "noise": run.noise,
                                                         "seed": run.seed, "out": str(run_dir), "root": root,
                                                         "quick": quick, "overrides": list(extra),
                                                         "warmup_steps": warmup_steps})
        (run_dir / "error.txt").unlink(missing_ok=True)
        return run.name, None
    except Exception as e:  # noqa: BLE001 - a failed run is recorded and the sweep goes on
        message = _error_text(e)
        (run_dir / "error.txt").write_text(message)
        return run.name, message.strip().splitlines()[-1] if message.strip() else type(e).__name__


def _error_text(e: Exception) -> str:
    """The failing cell's error (papermill's) or the traceback."""
    name, value = getattr(e, "ename", None), getattr(e, "evalue", None)
    if name:
        return f"{name}: {value}\n"
    return "".join(traceback.format_exception(e))


def is_finished(out: str | Path, run: Run) -> bool:
    return (Path(out) / "runs" / run.name / "results.json").is_file()


def sweep(runs: list[Run], out: str | Path = "runs/ablations", notebook: str = NOTEBOOK,
          jobs: int = 1, quick: bool = False, extra: list[str] | None = None, progress: bool = True,
          warmup_steps: int | None = None) -> SweepReport:
    """Execute the notebook for every run not finished yet, `jobs` at a time; failures are recorded
    (`runs/NAME/error.txt`) and the others go on. Run it again to finish a killed sweep. `warmup_steps`
    replaces the budget's (0: the image encoder trained from scratch with the rest)."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    from tqdm.auto import tqdm

    out = str(out)
    if not Path(notebook).is_file():
        raise FileNotFoundError(f"notebook not found: {notebook}")
    finished = [is_finished(out, r) for r in runs]
    report = SweepReport(skipped=[r.name for r, f in zip(runs, finished, strict=True) if f])
    todo = [r for r, f in zip(runs, finished, strict=True) if not f]
    budget = Budget.quick() if quick else Budget()
    if warmup_steps is not None:
        budget = replace(budget, warmup_steps=warmup_steps)
    for noise in dict.fromkeys(r.noise for r in todo):  # worlds first: runs side by side never race to make one
        make_world(out, noise, budget, progress=progress)
    if budget.warmup_steps:  # then each seed's image encoder, on every core, before the runs share them
        for run in {r.seed: r for r in todo}.values():
            try:
                warmed_encoder(run.noise, run.seed, out, budget, extra, progress)
            except Exception:  # noqa: BLE001 - e.g. a bad override: every run then fails with it, each recorded
                break
    if jobs > 1:  # one share of the cores per run (the user's own train.threads still wins)
        extra = [f"train.threads={max(1, (os.cpu_count() or 1) // jobs)}", *(extra or [])]
    bar = tqdm(total=len(runs), initial=len(report.skipped), desc="sweep", unit="run", disable=not progress)
    with ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_execute, notebook, r, out, out, quick, list(extra or []), budget.warmup_steps)
                   for r in todo]
        for f in as_completed(futures):
            name, error = f.result()
            if error is None:
                report.done.append(name)
            else:
                report.failed[name] = error
                bar.write(f"failed: {name}: {error}")
            bar.update(1)
            bar.set_postfix(failed=len(report.failed))
    bar.close()
    _write_json(Path(out) / "sweep.json", asdict(report))
    return report


# --- the summary ----------------------------------------------------------------------------------
def read_results(out: str | Path) -> list[dict]:
    """Every finished run's results.json under `out/runs/`."""
    return [json.loads(p.read_text()) for p in sorted(Path(out).glob("runs/*/results.json"))]


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(results: list[dict]) -> dict[float, dict[str, dict[str, tuple[float, float, int]]]]:
    """{noise: {variant: {column: (mean, std, seeds)}}} in the order of Table 1."""
    table: dict[float, dict[str, dict[str, tuple[float, float, int]]]] = {}
    for noise in sorted({r["noise"] for r in results}):
        rows = {}
        for variant in VARIANTS:
            mine = [r for r in results if r["noise"] == noise and r["variant"] == variant]
            if mine:
                rows[variant] = {col: (*mean_std([r["scores"][col] for r in mine if col in r["scores"]]),
                                       len(mine)) for col in COLUMNS}
        here = [r for r in results if r["noise"] == noise]
        blind = [r.get("blind", {}) for r in here]
        if any(blind):  # the same fine-tuned models with the images shuffled, over every run of this noise level
            rows["blind"] = {col: (*mean_std([b[col] for b in blind if col in b]), len(here)) for col in COLUMNS}
        base = [r["baselines"] for r in here]
        rows["baseline"] = {col: (*mean_std([b[col] for b in base if col in b]), len(base)) for col in COLUMNS}
        table[noise] = rows
    return table


def table_markdown(table: dict) -> str:
    """One Markdown table per noise level, mean ± std over seeds."""
    parts = []
    for noise, rows in table.items():
        lines = [f"caption noise {noise:g}", "", "| variant | seeds | " + " | ".join(COLUMNS) + " |",
                 "|---|---|" + "---|" * len(COLUMNS)]
        for variant, cols in rows.items():
            name = VARIANTS[variant].row if variant in VARIANTS else ROW_NAMES[variant]
            seeds = next(iter(cols.values()))[2]
            cells = [f"{m:.1f} ± {s:.1f}" if not math.isnan(m) else "-" for m, s, _ in cols.values()]
            lines.append(f"| {name} | {seeds} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def plot_noise(table: dict, path: str | Path | None = None):
    """Each variant's scores against caption noise, one panel per column; saved when `path` is given."""
    import matplotlib.pyplot as plt

    noises = list(table)
    cols = 3
    rows = -(-len(COLUMNS) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, col in zip(axes.flat, COLUMNS, strict=False):
        for variant in [*VARIANTS, *ROW_NAMES]:
            pts = [(n, *table[n][variant][col][:2]) for n in noises if variant in table[n]]
            if not pts:
                continue
            xs, ms, ss = zip(*pts, strict=True)
            style = {"ls": ":", "color": "grey" if variant == "baseline" else "black"} if variant in ROW_NAMES \
                else {"marker": "o"}
            ax.errorbar(xs, ms, yerr=ss, label=variant, capsize=3, **style)
        ax.set_title(col)
        ax.set_xlabel("caption noise")
        ax.set_ylabel("score (%)")
    axes.flat[0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def write_summary(out: str | Path) -> str:
    """Table 1 of every finished run under `out`: writes `summary.md`, `noise.png` and `results.json` (the
    table as numbers) into `out`; returns the Markdown."""
    import matplotlib.pyplot as plt

    results = read_results(out)
    table = summarize(results)
    markdown = table_markdown(table)
    (Path(out) / "summary.md").write_text(markdown + "\n")
    plt.close(plot_noise(table, Path(out) / "noise.png"))
    failed = sorted(p.parent.name for p in Path(out).glob("runs/*/error.txt"))
    _write_json(Path(out) / "results.json", {
        "runs": len(results), "failed": failed,
        "table": {f"{n:g}": {v: {c: list(s) for c, s in cols.items()} for v, cols in rows.items()}
                  for n, rows in table.items()}})
    return markdown
