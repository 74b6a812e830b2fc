"""VQA answer ranking time with the answer decoder's cross-attention keys/values over the question states
computed once per question (shared) vs once per candidate answer (before), same process, same inputs.

    python benchmarks/vqa_bench.py --size base --res 384 --questions 4 --k 128

The last line is `speedup: N.NN` (shared over per-candidate).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from retrieval_bench import SIZES, model_config  # noqa: E402

from albef_lab.models.factory import create_model  # noqa: E402


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=SIZES, default="base")
    ap.add_argument("--res", type=int, default=384)
    ap.add_argument("--questions", type=int, default=4)
    ap.add_argument("--question-len", type=int, default=12, help="question tokens (VQA v2 questions: ~8-14)")
    ap.add_argument("--k", type=int, default=128)
    ap.add_argument("--answers", type=int, default=1000, help="size of the answer list")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    cfg = model_config(args.size, args.res)
    cfg.distill = False
    torch.manual_seed(0)
    model = create_model("vqa", cfg).eval()
    g = torch.Generator().manual_seed(0)
    n, lo = args.questions, (1000 if cfg.text.vocab_size > 2000 else 104)
    image = torch.randn(n, 3, cfg.vision.image_res, cfg.vision.image_res, generator=g)
    q_ids = torch.randint(lo, cfg.text.vocab_size, (n, args.question_len), generator=g)
    q_ids[:, 0] = cfg.cls_token_id
    q_mask = torch.ones_like(q_ids)
    # an answer list like VQA v2's: mostly one word, some two or three; [CLS] answer [SEP], padded to the longest
    words = torch.multinomial(torch.tensor([0.0, 0.7, 0.2, 0.1]), args.answers, replacement=True, generator=g)
    a_ids = torch.randint(lo, cfg.text.vocab_size, (args.answers, 5), generator=g)
    a_ids[:, 0] = cfg.cls_token_id
    a_ids[torch.arange(args.answers), words + 1] = cfg.sep_token_id
    a_mask = (torch.arange(5)[None] <= (words + 1)[:, None]).long()
    a_ids = a_ids.masked_fill(a_mask == 0, 0)
    t = time.perf_counter()
    states = model.encode_question(image, q_ids, q_mask)
    encode_s = time.perf_counter() - t
    out, times = {}, {}
    for share in (False, True, False, True)[: 2 * args.repeats]:
        model.cfg.share_cross_kv = share
        t = time.perf_counter()
        out[share] = model.rank_from_states(states, q_mask, a_ids, a_mask, args.k)
        times.setdefault(share, []).append(time.perf_counter() - t)
    old, new = min(times[False]), min(times[True])
    same = torch.equal(out[False][0], out[True][0])
    diff = (out[False][1] - out[True][1]).abs().max().item()
    print(f"# {args.size} at {cfg.vision.image_res} px: {n} questions, k {args.k}, {args.answers} answers; CPU, "
          f"{torch.get_num_threads()} threads")
    print(f"encode the questions (ViT + 12 BERT layers, once): {encode_s:.2f} s")
    print(f"rank answers, per-candidate keys/values (before): {old:.2f} s")
    print(f"rank answers, shared keys/values:                 {new:.2f} s")
    print(f"identical answer rankings: {same}; largest probability difference {diff:.2e}")
    print(f"speedup: {old / new:.2f}")


if __name__ == "__main__":
    main()
