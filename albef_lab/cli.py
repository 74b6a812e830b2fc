"""`albef-lab` command line: demo, info, make-world, pretrain, finetune, evaluate, classify, export, export-shards,
plot, sweep, verify-reference."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch


def _add_config_args(p: argparse.ArgumentParser, default_preset: str | None = None) -> None:
    p.add_argument("--preset", default=default_preset, help="tiny or base")
    p.add_argument("--config", default=None, help="YAML file (see configs/)")
    p.add_argument("overrides", nargs="*", default=[], help="key=value overrides, e.g. model.embed_dim=128")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None, metavar="PATH",
                   help="your own images: a CSV / JSONL of image,caption rows, or a folder with one (retrieval, "
                        "pretrain)")
    p.add_argument("--val", default=None, metavar="PATH", help="validation rows (default: 10%% of --data's images)")


def cmd_info(args: argparse.Namespace) -> int:
    from albef_lab.models.factory import create_model, parameter_counts, state_dict_tsv
    from albef_lab.shapesworld import load_config

    cfg = load_config(args.config, args.overrides, args.preset)
    if args.state_dict:
        from albef_lab.models.registry import task_spec

        name = args.state_dict
        res = task_spec(name).finetune_res
        if cfg.preset == "base" and res and not any("image_res" in o for o in args.overrides):
            cfg.model.vision.image_res = res  # the original fine-tunes at 384 px
        model = create_model(name, cfg.model, device="meta")
        sys.stdout.write(state_dict_tsv(model))
        return 0
    model = create_model("pretrain", cfg.model, device="meta")
    m = cfg.model
    print(f"albef-lab preset {cfg.preset!r}: ViT {m.vision.depth} blocks x {m.vision.width} at {m.vision.image_res} px "
          f"(patch {m.vision.patch_size}); BERT {m.text.num_hidden_layers} layers x {m.text.hidden_size} "
          f"(fusion from layer {m.text.fusion_layer}); embed {m.embed_dim}, queue {m.queue_size}")
    for name, n in parameter_counts(model):
        print(f"  {name:<44} {n:>14,d}  ({n / 1e6:.1f}M)")
    print("  (the paper: BERT-base 123.7M, ViT-B/16 85.8M)")
    return 0


def cmd_verify_reference(args: argparse.Namespace) -> int:
    from albef_lab.reference import format_checks, verify_file

    torch.set_num_threads(max(1, torch.get_num_threads()))
    dtype = torch.float64 if args.double else torch.float32
    failed = 0
    for path in args.files:
        print(f"== {path} ({'float64' if args.double else 'float32'})")
        checks = verify_file(path, dtype)
        print(format_checks(checks))
        failed += sum(not c.ok for c in checks)
    print("verify-reference: " + ("FAIL" if failed else "PASS"))
    return 1 if failed else 0


def cmd_make_world(args: argparse.Namespace) -> int:
    import time

    from albef_lab.shapesworld.export import WorldSettings, write_world

    s = WorldSettings(out=args.out, seed=args.seed, images=args.images, res=args.res, noise=args.noise,
                      noise_style=args.noise_style, workers=args.workers,
                      caption_kinds=tuple(k.strip() for k in args.captions.split(",") if k.strip()))
    t0 = time.perf_counter()
    counts = write_world(s, progress=not args.quiet)
    print(f"ShapesWorld written to {args.out} in {time.perf_counter() - t0:.1f}s")
    for k, v in counts.items():
        print(f"  {k:<16} {v}")
    return 0


def _own_data(cfg, args: argparse.Namespace) -> bool:
    """`--data` (and `--val`): the user's image,caption rows, checked and written as the official retrieval files
    into the run folder, which the task then reads."""
    if not getattr(args, "data", None):
        return False
    from albef_lab.data.pairs import find_table, load_pairs

    pairs = load_pairs(args.data, args.val)
    for note in pairs.notes:
        print(f"note: {note}", file=sys.stderr)
    train_file, val_file = pairs.write(Path(cfg.train.output_dir) / "data")
    cfg.data.train_file, cfg.data.val_file = str(train_file.resolve()), str(val_file.resolve())
    cfg.data.image_root = str(find_table(args.data).parent.resolve())
    print(f"data: {len(pairs.train)} training and {len(pairs.val)} validation captions from {args.data}")
    return True


def _recalls(r: dict) -> str:
    return (f"text->image R@1 {r['img_r1']:.1f} R@5 {r['img_r5']:.1f}, image->text R@1 {r['txt_r1']:.1f} "
            f"R@5 {r['txt_r5']:.1f}")


def cmd_pretrain(args: argparse.Namespace) -> int:
    from albef_lab.eval.retrieval import chance_recall
    from albef_lab.shapesworld import load_config
    from albef_lab.train.engine import pretrain

    cfg = load_config(args.config, args.overrides, args.preset)
    _own_data(cfg, args)
    result = pretrain(cfg, resume=args.resume)
    from albef_lab import distributed as D

    if D.is_main_process() and "img_r1" in result:
        print(f"done: {result['step']} steps in {result['seconds'] / 60:.1f} min; held-out zero-shot retrieval: "
              f"text->image R@1 {result['img_r1']:.1f}% R@5 {result['img_r5']:.1f}%, image->text R@1 "
              f"{result['txt_r1']:.1f}%, ITM accuracy {result['itm_acc']:.1f}% "
              f"(chance: R@1 {chance_recall(result.get('n_images', 0)):.2f}%, ITM 50%)")
        if "itm_pair_hard" in result:
            print(f"against each image's most ITC-similar false caption: ITM accuracy {result['itm_acc_hard']:.1f}%; "
                  f"the own caption scored above it by ITM for {result['itm_pair_hard']:.1f}% of images, by ITC for "
                  f"{result['itc_pair_hard']:.1f}%")
        print(f"checkpoint: {cfg.train.output_dir}/model.pth; curves: albef-lab plot {cfg.train.output_dir}")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from albef_lab.shapesworld import load_config
    from albef_lab.train.engine import train

    cfg = load_config(args.config, args.overrides, args.preset)
    if not any(o.startswith("train.output_dir=") for o in args.overrides) and cfg.train.output_dir.startswith("runs/"):
        cfg.train.output_dir = f"runs/{args.task}_{cfg.preset}"
    from albef_lab import distributed as D

    zero_shot = None
    if _own_data(cfg, args) and args.task == "retrieval" and args.init and not args.resume:
        import copy

        from albef_lab.train.engine import evaluate

        zero_shot = evaluate(copy.deepcopy(cfg), "retrieval", args.init,
                             out_dir=Path(cfg.train.output_dir) / "zero_shot")
        print(f"zero-shot, {Path(args.init).name} before fine-tuning: {_recalls(zero_shot)}")
    result = train(cfg, args.task, resume=args.resume, init=args.init)
    if D.is_main_process():
        shown = ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items())
        print(f"{args.task}: {shown}\nmodel: {cfg.train.output_dir}/model.pth")
        if zero_shot is not None:
            print(f"zero-shot:  {_recalls(zero_shot)}\nfine-tuned: {_recalls(result)}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from albef_lab.shapesworld import load_config
    from albef_lab.train.engine import evaluate

    cfg = load_config(args.config, args.overrides, args.preset)
    if getattr(args, "data", None) and args.task not in ("retrieval", "pretrain"):
        raise ValueError(f"--data holds image,caption rows: it serves retrieval and pretrain, not {args.task}")
    _own_data(cfg, args)
    metrics = evaluate(cfg, args.task, args.checkpoint, blind=args.blind, verbose=True)
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in metrics.items()}))
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    from albef_lab.data.tokenizer import load_tokenizer
    from albef_lab.inference import InputError, Workbench, load_checkpoint, read_image
    from albef_lab.shapesworld import load_config

    checkpoint = Path(args.checkpoint or Path(args.runs) / "pretrain" / "model.pth")
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint} not found: give --checkpoint, or build the demo's models once "
                                "(`albef-lab demo`)")
    loaded = load_checkpoint(checkpoint, load_config(None, [], args.preset).model)
    if loaded.task == "vqa":
        raise ValueError(f"{checkpoint} is a VQA model; classify needs a pre-training or retrieval model")
    wb = Workbench(load_tokenizer(args.tokenizer or Path(args.data) / "vocab"), loaded)
    try:
        rows, notes = wb.classify(read_image(args.image), args.labels, args.template, rerank=not args.no_rerank)
    except InputError as e:
        raise ValueError(str(e)) from None
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"{'label':<24} {'ITC':>7} {'P(ITC)':>7}" + ("" if args.no_rerank else f" {'P(ITM)':>7}"))
    for r in rows:
        print(f"{r['label']:<24} {r['itc']:>7.3f} {r['itc_prob']:>7.3f}" + ("" if args.no_rerank else
                                                                          f" {r['itm']:>7.3f}"))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from albef_lab.inference import load_checkpoint
    from albef_lab.onnx_export import export_onnx, format_checks
    from albef_lab.shapesworld import load_config

    loaded = load_checkpoint(args.checkpoint, load_config(None, [], args.preset).model)
    if loaded.task == "vqa":
        raise ValueError(f"{args.checkpoint} is a VQA model; the export takes a pre-training or retrieval model")
    vocab = Path(args.tokenizer) if args.tokenizer else None
    if vocab is not None and not (vocab / "vocab.txt" if vocab.is_dir() else vocab).is_file():
        raise FileNotFoundError(f"no vocab.txt at {vocab}")
    t0 = time.perf_counter()
    manifest, checks = export_onnx(loaded.model, args.out, vocab=vocab, source=Path(args.checkpoint).name)
    print(f"exported {args.checkpoint} ({loaded.task}, {manifest.image_res} px) to {args.out} in "
          f"{time.perf_counter() - t0:.0f} s; onnxruntime against torch at batch x length 1 x 2 and 3 x 11:")
    print(format_checks(checks))
    if vocab is None:
        print("note: no --tokenizer given, so no vocab.txt was copied beside the files", file=sys.stderr)
    return 0


def cmd_export_shards(args: argparse.Namespace) -> int:
    from albef_lab.data.shards import export_shards

    if args.world:
        files, images = [Path(args.world) / "pretrain.json"], args.images or args.world
    elif args.json:
        files, images = args.json, args.images or str(Path(args.json[0]).parent)
    else:
        raise ValueError("give --json FILE [FILE ...] (and --images ROOT), or --world DIR")
    t0 = time.perf_counter()
    pattern, n = export_shards(files, images, args.out, per_shard=args.per_shard, progress=not args.quiet)
    print(f"{n} samples written in {time.perf_counter() - t0:.0f} s; pre-train on them with data.shards={pattern}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from albef_lab.train.plot import plot_metrics

    print(f"wrote {plot_metrics(args.run, args.out)}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from albef_lab.shapesworld.ablation import grid, sweep, write_summary

    runs = grid(args.variants, args.noise, args.seeds)
    t0 = time.perf_counter()
    report = sweep(runs, args.out, args.notebook, jobs=args.jobs, quick=args.quick, extra=args.overrides,
                   warmup_steps=args.warmup_steps)
    print(f"sweep: {len(report.done)} run(s) executed, {len(report.skipped)} already finished, "
          f"{len(report.failed)} failed, in {(time.perf_counter() - t0) / 60:.1f} minutes; "
          f"executed notebooks under {args.out}/runs/")
    for name, error in report.failed.items():
        print(f"  failed: {name}: {error} (see {args.out}/runs/{name}/error.txt)")
    if report.done or report.skipped:
        print(write_summary(args.out))
        print(f"summary: {args.out}/summary.md, {args.out}/noise.png, {args.out}/results.json")
    return 1 if report.failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="albef-lab", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of user errors too")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="parameter counts, or the state-dict layout as TSV")
    _add_config_args(p, "tiny")
    p.add_argument("--state-dict", nargs="?", const="pretrain", default=None, metavar="MODEL",
                   help="print key<TAB>shape<TAB>dtype for MODEL (default pretrain), built without weights")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("make-world", help="generate a ShapesWorld data set in the official formats")
    p.add_argument("--out", default="data/shapesworld")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--images", type=int, default=3000)
    p.add_argument("--res", type=int, default=64, help="image size in pixels")
    p.add_argument("--noise", type=float, default=0.0, help="fraction of pre-training captions corrupted")
    p.add_argument("--noise-style", choices=["replace", "web"], default="replace",
                   help="replace: a wholly wrong caption; web: a partly right one, its false words recorded")
    p.add_argument("--captions", default="listing,count,single,relation",
                   help="the kinds of caption, comma-separated (listing,relation: captions true of few scenes)")
    p.add_argument("--workers", type=int, default=2, help="processes that render images")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_make_world)

    p = sub.add_parser("pretrain", help="pre-train ALBEF (default: tiny preset on ShapesWorld, CPU, <10 min)")
    _add_config_args(p, None)
    _add_data_args(p)
    p.add_argument("--resume", default=None, metavar="auto|PATH", help="continue from a checkpoint")
    p.set_defaults(func=cmd_pretrain)

    from albef_lab.models.registry import TASKS

    tasks = list(TASKS)
    p = sub.add_parser("finetune", help="fine-tune a task (from --init: ALBEF.pth, ours, or a fine-tuned file)")
    p.add_argument("task", choices=tasks)
    _add_config_args(p, None)
    p.add_argument("--init", default=None, help="pre-trained or fine-tuned checkpoint to start from")
    _add_data_args(p)
    p.add_argument("--resume", default=None, metavar="auto|PATH")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("evaluate", help="evaluate a checkpoint on a task's evaluation split")
    p.add_argument("task", choices=tasks)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--blind", choices=["shuffle", "blank", "text"], default="",
                   help="a control: every image swapped for another item's (shuffle) or blanked (blank); grounding: "
                        "each expression's map scored against another object's box (text)")
    _add_config_args(p, None)
    _add_data_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("classify", help="zero-shot classification of an image: ITC over the labels, ITM re-ranks")
    p.add_argument("image")
    p.add_argument("--labels", required=True, help='comma-separated, e.g. "circle, square, triangle"')
    p.add_argument("--template", default="a photo of a {}", help="each label goes where {} is")
    p.add_argument("--checkpoint", default=None, help="pre-training or retrieval model (default: the demo's)")
    p.add_argument("--preset", default="base", help="architecture of an official file")
    p.add_argument("--tokenizer", default=None, help="folder with vocab.txt (default: DATA/vocab)")
    p.add_argument("--runs", default="runs/demo", help="where the demo's models live")
    p.add_argument("--data", default="data/shapesworld")
    p.add_argument("--no-rerank", action="store_true", help="ITC alone")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("export", help="write a model as ONNX files (image encoder, text encoder, ITM head), "
                       "checked against torch under onnxruntime")
    p.add_argument("format", choices=["onnx"])
    p.add_argument("checkpoint", help="pre-training or retrieval model (ours or an official file)")
    p.add_argument("out", help="folder for the .onnx files and albef_onnx.json")
    p.add_argument("--preset", default="base", help="architecture of an official file")
    p.add_argument("--tokenizer", default=None, help="folder with vocab.txt, copied beside the files")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("export-shards", help="write pre-training pairs as WebDataset tar shards (data.shards reads "
                       "them)")
    p.add_argument("out", help="folder for the shards")
    p.add_argument("--json", nargs="+", default=None, help="the official pre-training JSON file(s)")
    p.add_argument("--images", default=None, help="image root of the JSON's paths (default: the JSON's folder)")
    p.add_argument("--world", default=None, help="a ShapesWorld folder (its pretrain.json and images)")
    p.add_argument("--per-shard", type=int, default=1000, help="samples per shard")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_export_shards)

    p = sub.add_parser("plot", help="draw the curves of a run (metrics.jsonl -> PNG)")
    p.add_argument("run", help="run directory or metrics.jsonl")
    p.add_argument("--out", default=None)
    p.set_defaults(func=cmd_plot)

    from albef_lab.shapesworld.ablation import NOTEBOOK, VARIANTS

    p = sub.add_parser("sweep", help="Table 1 ablations: notebook 02 over variants x noise x seeds with papermill "
                       "(skips finished runs, so a killed sweep resumes)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="VARIANT",
                   help=f"default: all of {' '.join(VARIANTS)}")
    p.add_argument("--noise", nargs="+", type=float, default=[0.0, 0.4], help="caption noise levels")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--jobs", type=int, default=2, help="runs side by side (each gets its share of the cores)")
    p.add_argument("--out", default="runs/ablations")
    p.add_argument("--notebook", default=NOTEBOOK)
    p.add_argument("--quick", action="store_true", help="seconds per run (a smoke test of the sweep)")
    p.add_argument("--warmup-steps", type=int, default=None, metavar="N",
                   help="image-encoder warm-up steps per seed (default: the budget's; 0: the ViT trains from scratch "
                        "with the rest, as the README's first Table 1)")
    p.add_argument("overrides", nargs="*", help="key=value config overrides for every run and stage")
    p.set_defaults(func=cmd_sweep)

    sub.add_parser("demo", help="the Gradio workbench in the browser (first start builds the demo models)",
                   add_help=False)

    p = sub.add_parser("verify-reference", help="compare against a dump of the original implementation")
    p.add_argument("files", nargs="+", help="fixture files (.pt) in the reference dump format")
    p.add_argument("--double", action="store_true", help="run our model in float64")
    p.set_defaults(func=cmd_verify_reference)
    return parser


def _user_errors() -> tuple[type[Exception], ...]:
    from albef_lab.config import ConfigError
    from albef_lab.models.checkpoint import CheckpointError

    # ValueError: the library's word for bad input (a data file, a setting); bugs keep their traceback
    return (FileNotFoundError, ConfigError, CheckpointError, ValueError)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["demo"]:  # the app parses its own options (albef-lab demo --help)
        from albef_lab.demo import app_module

        return app_module().main(argv[1:])
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come after options (argparse stops filling a positional list at an option)
    bad = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        return args.func(args)
    except _user_errors() as e:  # bad config, missing file, bad checkpoint: one clear message
        if args.debug:
            raise
        print(f"albef-lab {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
