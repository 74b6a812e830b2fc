"""albef-lab's Gradio workbench: retrieval, VQA, Grad-CAM and grounding in the browser.

Run `albef-lab demo` (or `python app/main.py`, same options). This file holds only UI code: every
computation is `albef_lab.inference.Workbench`, which the notebooks use too.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import os
import sys
import tempfile
from pathlib import Path

import gradio as gr

from albef_lab.demo import DemoBuild, world_texts
from albef_lab.inference import InputError, Workbench, read_image
from albef_lab.viz.overlay import draw_boxes, overlay

MAX_UPLOAD = "50mb"
CSS = ".gallery-item .caption-label { font-size: 14px; }"


def image_input(**kw) -> gr.Image:
    """An image input that hands the uploaded file over untouched: `read_image` checks and converts it, so a
    corrupt, 16-bit or CMYK upload gets our message instead of a failure inside Gradio's own decoding."""
    image = gr.Image(type="filepath", **kw)
    image.preprocess = lambda payload: None if payload is None else payload.path
    return image


def user_errors(fn):
    """Bad input becomes a message in the UI (and an exception for API clients); notes become warnings."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            out = fn(*args, **kwargs)
        except InputError as e:
            raise gr.Error(str(e), print_exception=False) from e  # the person reads it; no traceback in the log
        return out

    return wrapper


class ImageFiles:
    """Output images as PNG files named by their content, each written once and renamed into place. Gradio
    rewrites a PIL output's cache file in place, so two requests with the same picture at the same moment could
    serve each other a half-written file; a finished file of ours it only copies."""

    def __init__(self):
        self._dir = tempfile.TemporaryDirectory(prefix="albef-lab-app-")
        self.root = Path(self._dir.name)

    def __call__(self, image) -> str:
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        data = buf.getvalue()
        path = self.root / f"{hashlib.sha256(data).hexdigest()[:24]}.png"
        if not path.is_file():
            fd, tmp = tempfile.mkstemp(dir=self.root, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        return str(path)


def warn(notes: list[str]) -> str:
    for n in notes:
        gr.Warning(n)
    return "\n".join(f"- {n}" for n in notes)


def image_arg(image: str | None) -> str:
    if not image:
        raise InputError("no image was given: upload one (or pick an example)")
    return image


def build_app(source: Workbench | DemoBuild) -> gr.Blocks:
    """The page on a ready workbench, or on the demo's build: then it is served at once, shows the build's
    progress, and each tab answers as soon as its model is loaded."""
    build = source if isinstance(source, DemoBuild) else None
    get = build.workbench if build else (lambda need="matcher": source)
    if build:
        examples = [str(p) for p in world_texts(build.paths.data)[2][:4]]
        layers, default_layer = build.layers()
    else:
        examples = [str(p) for p in (source.gallery.paths[:4] if source.gallery else [])]
        layers = source.layers() if source.matcher else []
        default_layer = source.default_layer() if source.matcher else None
    as_file = ImageFiles()

    def about():
        wb = build.wb if build else source
        return wb.about() if wb is not None else []

    def poll():
        return build.status_markdown(), about(), gr.Timer(active=not build.done)

    @user_errors
    def search(query: str, k: float = 8, rerank: bool = True):
        rows, notes = get("matcher").search(query, k, rerank)
        items = [(r["path"], f"ITC {r['itc']:.3f}" + (f" · ITM {r['itm']:.2f}" if "itm" in r else "")) for r in rows]
        return items, warn(notes)

    @user_errors
    def describe(image: str, k: float = 5):
        rows = get("matcher").describe(read_image(image_arg(image)), k)
        return "\n".join(f"{i + 1}. {r['caption']} (ITC {r['itc']:.3f})" for i, r in enumerate(rows))

    @user_errors
    def classify(image: str, labels: str, template: str = "a photo of a {}", rerank: bool = True):
        rows, notes = get("matcher").classify(read_image(image_arg(image)), labels, template, rerank)
        key = "itm" if rerank else "itc_prob"
        return {r["label"]: r[key] for r in rows}, warn(notes)

    @user_errors
    def answer(image: str, question: str, k: float = 5):
        rows, notes = get("vqa").answer(read_image(image_arg(image)), question, k)
        return {r["answer"]: r["score"] for r in rows}, warn(notes)

    @user_errors
    def gradcam(image: str, text: str, mode: str = "itm", layer: float | None = None, cam_methods: bool = True):
        img, wb = read_image(image_arg(image)), get("matcher")
        r = wb.explain(img, text, mode, None if layer is None or mode == "itc" else int(layer))
        shown, _ = enlarge(img)
        words = [(as_file(overlay(shown, m)), tok) for tok, m in r["words"]]
        cams = []
        if cam_methods:
            cams = [(as_file(overlay(shown, _tensor(m))), name) for name, m in wb.cam_methods(img, text).items()]
        where = f"cross-attention layer {r['layer']}" if mode == "itm" else f"ViT block {r['layer']}"
        summary = (f"**ITM match probability** {r['itm_prob']:.3f} · **ITC similarity** {r['itc_sim']:.3f} · "
                   f"Grad-CAM of {mode.upper()} on {where}")
        notes = warn(r["notes"])
        return summary, as_file(overlay(shown, r["sentence"])), words, cams, notes

    @user_errors
    def ground(image: str, expression: str, mode: str = "itm", layer: float | None = None):
        img = read_image(image_arg(image))
        r = get("matcher").ground(img, expression, image_path=image, mode=mode,
                      layer=None if layer is None or mode == "itc" else int(layer))
        shown, scale = enlarge(img)
        boxes = [(p[:4], "#bbbbbb") for p in r["proposals"]] if r["proposal_source"] != "sliding windows" else []
        if r["box"] is not None:
            boxes.append((r["box"], "#00ff00"))
        boxes = [([v * scale for v in box], colour) for box, colour in boxes]
        info = (f"{len(r['proposals'])} {r['proposal_source']}; chosen box (x, y, w, h): "
                f"{[round(v, 1) for v in r['box']] if r['box'] else 'none (the map is empty)'}")
        notes = "\n" + warn(r["notes"]) if r["notes"] else ""
        return as_file(draw_boxes(shown, boxes)), as_file(overlay(shown, r["sentence"])), info + notes

    with gr.Blocks(title="albef-lab workbench") as demo:
        gr.Markdown("# albef-lab workbench\nALBEF (Align before Fuse): retrieval, VQA, Grad-CAM, grounding and "
                    "zero-shot classification.")
        if build:
            status = gr.Markdown(build.status_markdown(), elem_id="build-status")
        with gr.Accordion("About the model", open=False):
            loaded = gr.JSON(value=about(), label="loaded checkpoints")
        if build:
            timer = gr.Timer(2.0, active=not build.done)
            timer.tick(poll, None, [status, loaded, timer], api_name=False, show_progress="hidden")
            demo.load(poll, None, [status, loaded, timer], api_name=False, show_progress="hidden")
        with gr.Tab("Retrieval"):
            with gr.Row():
                query = gr.Textbox(label="Text query", placeholder="a red circle to the left of a blue square")
                k = gr.Slider(1, 24, value=8, step=1, label="top k")
                rerank = gr.Checkbox(value=True, label="re-rank with ITM")
            go = gr.Button("Search", variant="primary")
            results = gr.Gallery(label="Top images", columns=4, height="auto", elem_id="search-results")
            search_notes = gr.Markdown()
            go.click(search, [query, k, rerank], [results, search_notes], api_name="search")
            query.submit(search, [query, k, rerank], [results, search_notes], api_name=False)
            gr.Examples([["a red circle"], ["two shapes"], ["a blue square"]], [query])
            gr.Markdown("### Image → captions")
            with gr.Row():
                d_image = image_input(label="Image", elem_id="describe-image")
                captions = gr.Markdown()
            gr.Button("Describe").click(describe, [d_image], [captions], api_name="describe")
            if examples:
                gr.Examples([[e] for e in examples], [d_image])
        with gr.Tab("VQA"):
            with gr.Row():
                v_image = image_input(label="Image", elem_id="vqa-image")
                with gr.Column():
                    question = gr.Textbox(label="Question", placeholder="what color is the circle")
                    ask = gr.Button("Answer", variant="primary")
                    answers = gr.Label(label="Top answers", num_top_classes=5, elem_id="vqa-answers")
                    vqa_notes = gr.Markdown()
            ask.click(answer, [v_image, question], [answers, vqa_notes], api_name="answer")
            if examples:
                gr.Examples([[examples[0], "how many shapes are there"], [examples[1], "is there a red circle"]],
                            [v_image, question])
        with gr.Tab("Grad-CAM"):
            with gr.Row():
                g_image = image_input(label="Image", elem_id="cam-image")
                with gr.Column():
                    g_text = gr.Textbox(label="Text", placeholder="a red circle", elem_id="cam-text")
                    mode = gr.Radio(["itm", "itc"], value="itm", label="mode (ITM on cross-attention / ITC on ViT)")
                    layer = gr.Dropdown(layers, value=default_layer,
                                        label="cross-attention layer (ITM)")
                    cams = gr.Checkbox(value=True, label="also pytorch-grad-cam methods")
                    explain = gr.Button("Explain", variant="primary")
            summary = gr.Markdown()
            with gr.Row():
                sentence = gr.Image(label="whole sentence", type="pil", elem_id="cam-sentence")
                words = gr.Gallery(label="per word", columns=6, height="auto", elem_id="cam-words")
            methods = gr.Gallery(label="pytorch-grad-cam (target: ITC similarity)", columns=4, height="auto",
                                 elem_id="cam-methods")
            cam_notes = gr.Markdown()
            explain.click(gradcam, [g_image, g_text, mode, layer, cams], [summary, sentence, words, methods, cam_notes],
                          api_name="gradcam")
            if examples:
                gr.Examples([[examples[0], "there is a red circle"], [examples[2], "two shapes"]], [g_image, g_text])
        with gr.Tab("Grounding"):
            with gr.Row():
                r_image = image_input(label="Image", elem_id="ground-image")
                with gr.Column():
                    expression = gr.Textbox(label="Referring expression", placeholder="the red circle")
                    r_mode = gr.Radio(["itm", "itc"], value="itm", label="Grad-CAM mode")
                    r_layer = gr.Dropdown(layers, value=default_layer,
                                          label="cross-attention layer (ITM)")
                    locate = gr.Button("Ground", variant="primary")
            with gr.Row():
                chosen = gr.Image(label="chosen region (green)", type="pil", elem_id="ground-box")
                heat = gr.Image(label="heat map", type="pil", elem_id="ground-heat")
            ground_info = gr.Markdown()
            locate.click(ground, [r_image, expression, r_mode, r_layer], [chosen, heat, ground_info], api_name="ground")
            if examples:
                gr.Examples([[examples[0], "the large shape"], [examples[3], "the red shape"]], [r_image, expression])
        with gr.Tab("Classify"):
            with gr.Row():
                c_image = image_input(label="Image", elem_id="classify-image")
                with gr.Column():
                    labels = gr.Textbox(label="Labels (comma-separated)", placeholder="circle, square, triangle",
                                        elem_id="classify-labels")
                    template = gr.Textbox(label="Template ({} is the label)", value="a photo of a {}")
                    c_rerank = gr.Checkbox(value=True, label="re-rank with ITM (else: ITC's softmax)")
                    run = gr.Button("Classify", variant="primary")
            ranked = gr.Label(label="Labels", num_top_classes=10, elem_id="classify-labels-out")
            classify_notes = gr.Markdown()
            run.click(classify, [c_image, labels, template, c_rerank], [ranked, classify_notes], api_name="classify")
            if examples:
                gr.Examples([[examples[0], "circle, square, triangle, star", "a {}"]], [c_image, labels, template])
    return demo


def enlarge(image, side: int = 384):
    """Small images (ShapesWorld's are 64 px) drawn larger, so that maps and boxes can be seen; returns the scale."""
    scale = max(1.0, side / max(image.size))
    if scale == 1.0:
        return image, 1.0
    return image.resize((round(image.width * scale), round(image.height * scale)), resample=3), scale


def _tensor(m):
    import torch

    return torch.as_tensor(m)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="albef-lab demo", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", action="append", default=[], metavar="FILE",
                   help="ours or official (ALBEF.pth, mscoco.pth, refcoco.pth, vqa.pth); repeat for several")
    p.add_argument("--preset", default="base", help="architecture of official files (default base)")
    p.add_argument("--tokenizer", default=None, help="folder with vocab.txt (e.g. a local bert-base-uncased)")
    p.add_argument("--gallery", default=None, help="folder of your own images to search (default: ShapesWorld's test)")
    p.add_argument("--runs", default="runs/demo", help="where the embedded default's models live")
    p.add_argument("--data", default="data/shapesworld", help="the ShapesWorld folder")
    p.add_argument("--host", default="127.0.0.1", help="bind address (127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from albef_lab.demo import DemoPaths, build_workbench, ensure_world
    from albef_lab.models.checkpoint import CheckpointError

    args = parse_args(argv)
    try:
        if args.checkpoint:
            source = build_workbench(args.checkpoint, args.preset, args.tokenizer, args.gallery, args.runs, args.data)
            report_skipped(source)
        else:  # the embedded default: the world now (seconds), the models behind the served page
            paths = DemoPaths(Path(args.runs), Path(args.data))
            ensure_world(paths)
            source = DemoBuild(paths, gallery=args.gallery, progress=True).start()
    except (CheckpointError, FileNotFoundError, InputError) as e:
        print(f"albef-lab demo: error: {e}", file=sys.stderr)
        return 2
    app = build_app(source)
    app.launch(server_name=args.host, server_port=args.port, max_file_size=MAX_UPLOAD,
               allowed_paths=[str(Path(p).resolve()) for p in (args.data, args.gallery) if p])
    return 0


def report_skipped(wb: Workbench) -> None:
    if wb.gallery and wb.gallery.skipped:
        print(f"gallery: skipped {len(wb.gallery.skipped)} unreadable file(s): " +
              "; ".join(f"{k} ({v})" for k, v in list(wb.gallery.skipped.items())[:10]))


if __name__ == "__main__":
    sys.exit(main())
