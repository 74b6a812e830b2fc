"""The fast training path (libjpeg-turbo decode, uint8 bicubic) computes the paper's transform: same draws, the
same crops and ranges, pixels within rounding of PIL's; `resize="pil"` is the original's pipeline bit for bit."""

import random
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from albef_lab.data.datasets import PretrainDataset, read_uint8
from albef_lab.data.randaugment import RandomAugment
from albef_lab.data.transforms import MEAN, STD, ImageTextTransform, pretrain_transform

W, H = 320, 240


def seed(i: int) -> None:
    torch.manual_seed(i), random.seed(i), np.random.seed(i)


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    from skimage import data as samples

    path = tmp_path_factory.mktemp("jpg") / "coffee.jpg"
    Image.fromarray(samples.coffee()).resize((W, H), Image.BICUBIC).save(path, quality=90)
    return path


def test_jpegs_decode_to_pils_pixels_and_bad_ones_name_the_file(photo, tmp_path):
    assert torch.equal(read_uint8(photo), torch.from_numpy(np.array(Image.open(photo).convert("RGB"))).permute(2, 0, 1))
    truncated = tmp_path / "half.jpg"
    truncated.write_bytes(photo.read_bytes()[:2000])
    with pytest.raises(ValueError, match="half.jpg: not a readable image"):
        read_uint8(truncated)
    png = tmp_path / "p.png"
    Image.open(photo).save(png)
    assert torch.equal(read_uint8(png), read_uint8(photo).new_tensor(np.array(Image.open(png))).permute(2, 0, 1))


def test_fast_and_pil_paths_draw_the_same_and_differ_by_rounding(photo):
    fast, pil = pretrain_transform(96), pretrain_transform(96, resize="pil")
    assert fast.wants_tensor and not pil.wants_tensor
    x, img = read_uint8(photo), Image.open(photo).convert("RGB")
    low, high = [(v - m) / s for v, m, s in ((0, MEAN[0], STD[0]), (1, MEAN[0], STD[0]))]
    for i in range(12):
        seed(i)
        a, texts_a = fast(x, ["a cup left of a plate"])
        seed(i)
        b, _ = pil(img, ["a cup left of a plate"])
        assert a.shape == b.shape == (3, 96, 96) and a.dtype == torch.float32
        assert texts_a == ["a cup left of a plate"]  # the paper's flip leaves captions alone
        assert a.min() >= low - 0.5 and a.max() <= high + 0.5  # normalised [0, 1] (channel constants differ a bit)
        diff = (a - b).abs() * torch.tensor(STD)[:, None, None] * 255  # in uint8 levels
        assert diff.mean() < 0.5, (i, diff.mean())
        assert (diff < 0.5).float().mean() > 0.9, i


def test_without_randaugment_the_pixels_are_pils_but_for_rounding(photo):
    fast = ImageTextTransform(80, train=True, scale=(0.2, 1.0), randaugment=False)
    pil = ImageTextTransform(80, train=True, scale=(0.2, 1.0), randaugment=False, resize="pil")
    x, img = read_uint8(photo), Image.open(photo).convert("RGB")
    for i in range(20):
        seed(i)
        a = fast(x)[0]
        seed(i)
        b = pil(img)[0]
        levels = ((a - b).abs() * torch.tensor(STD)[:, None, None] * 255).round()
        assert levels.max() <= 8 and (levels == 0).float().mean() > 0.97, (i, levels.max())


def test_the_fast_crop_keeps_20_to_100_percent_of_the_image_at_the_papers_aspect_ratios():
    """A gradient image tells where each output came from (red is x, green is y): every output's extent is the
    box torchvision's RandomResizedCrop draws for the paper's scale and ratio under the same seed."""
    xs, ys = np.meshgrid(np.linspace(0, 255, W), np.linspace(0, 255, H))
    x = torch.from_numpy(np.stack([xs, ys, np.zeros_like(xs)], -1).round().astype(np.uint8)).permute(2, 0, 1)
    t = ImageTextTransform(64, train=True, scale=(0.2, 1.0), randaugment=False, flip=False)
    seen, drawn = [], []
    seed(0)
    for _ in range(300):
        out = t(x)[0] * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]
        r, g = out[0] * 255, out[1] * 255
        # pixel centres: the outer output columns sit half an output pixel inside the box
        seen.append((float(r.max() - r.min()) / 255 * W * 64 / 63, float(g.max() - g.min()) / 255 * H * 64 / 63))
    seed(0)
    for _ in range(300):
        _, _, h, w = T.RandomResizedCrop.get_params(x, (0.2, 1.0), (3 / 4, 4 / 3))
        drawn.append((w, h))
    seen, drawn = np.array(seen), np.array(drawn, dtype=float)
    assert np.abs(seen - drawn).max() < 4  # pixels of a 320 x 240 image
    area = drawn.prod(1) / (W * H)
    assert area.min() >= 0.2 - 1e-3 and area.max() <= 1 and (area < 0.3).any() and (area > 0.9).any()
    aspect = drawn[:, 0] / drawn[:, 1]
    assert aspect.min() > 0.74 and aspect.max() < 1.34


def test_the_pil_switch_is_the_originals_pipeline_bit_for_bit(photo):
    res = 64
    original = T.Compose([T.RandomResizedCrop(res, scale=(0.2, 1.0), interpolation=T.InterpolationMode.BICUBIC),
                          RandomAugment(2, 7), T.ToTensor(), T.Normalize(MEAN, STD)])
    ours = ImageTextTransform(res, train=True, scale=(0.2, 1.0), flip=False, resize="pil")
    img = Image.open(photo).convert("RGB")
    for i in range(8):
        seed(i)
        a = original(img)
        seed(i)
        assert torch.equal(ours(img)[0], a), i


def test_the_dataset_reads_jpegs_the_fast_way_and_skips_a_corrupt_one(photo, tmp_path):
    import json
    import shutil

    for n in ("a.jpg", "b.jpg", "c.jpg"):
        shutil.copy(photo, tmp_path / n)
    (tmp_path / "b.jpg").write_bytes(photo.read_bytes()[:3000])
    rows = [{"image": n, "caption": "a cup"} for n in ("a.jpg", "b.jpg", "c.jpg")]
    (tmp_path / "p.json").write_text(json.dumps(rows))
    ds = PretrainDataset(tmp_path / "p.json", tmp_path, pretrain_transform(48))
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        items = [ds[i] for i in range(3)]
    assert [it[0].shape for it in items] == [(3, 48, 48)] * 3
    assert list(ds.skipped) == [str(tmp_path / "b.jpg")]
