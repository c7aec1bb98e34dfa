"""Fixtures for the dataset suite (tests/test_dataset.c, tests/cli_dataset.sh).

Writes tests/fixtures/datasets/:
  images/   tiny PNG/JPEG inputs with .txt captions (c.png has none),
  bad/      one good PNG and one corrupt "PNG",
  ref_<name>_resize<R>.png   torchvision Resize(R, BILINEAR) of the PIL image,
  ref_<name>_center<R>.png   then CenterCrop(R): what diffusers'
                              train_text_to_image(_lora).py feeds the VAE,
  versions.txt              the library versions that made them.
Run: ~/ref/bin/python tests/golden/datasets.py
"""
import os

import numpy as np
import PIL
import torch
import torchvision
from PIL import Image
from torchvision import transforms

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "datasets")
R = 24  # resolution of the references (the VAE needs multiples of 8)


def pattern(w, h, seed):
    """Smooth gradients plus noise: resampling errors show, JPEG stays small."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([255 * x / (w - 1), 255 * y / (h - 1), 127 + 100 * np.sin((x + y) / 3.0)], -1)
    img += rng.normal(0, 20, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def main():
    os.makedirs(os.path.join(ROOT, "images"), exist_ok=True)
    os.makedirs(os.path.join(ROOT, "bad"), exist_ok=True)
    imgs = {
        "a.png": pattern(40, 30, 1),
        "b.jpg": pattern(30, 40, 2),
        "c.png": pattern(60, 20, 3),
    }
    imgs["a.png"].save(os.path.join(ROOT, "images", "a.png"))
    imgs["b.jpg"].save(os.path.join(ROOT, "images", "b.jpg"), quality=90)
    imgs["c.png"].save(os.path.join(ROOT, "images", "c.png"))
    with open(os.path.join(ROOT, "images", "a.txt"), "w", encoding="utf-8") as f:
        f.write("a photo of a red cat\n")
    with open(os.path.join(ROOT, "images", "b.txt"), "w", encoding="utf-8") as f:
        f.write("  une tasse de café, 東京  \n")
    imgs["a.png"].save(os.path.join(ROOT, "bad", "good.png"))
    with open(os.path.join(ROOT, "bad", "broken.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x0dIHDR" + b"\x01" * 20)
    for name in imgs:
        im = Image.open(os.path.join(ROOT, "images", name)).convert("RGB")
        stem = name.split(".")[0]
        rs = transforms.Resize(R, interpolation=transforms.InterpolationMode.BILINEAR)(im)
        rs.save(os.path.join(ROOT, f"ref_{stem}_resize{R}.png"))
        transforms.CenterCrop(R)(rs).save(os.path.join(ROOT, f"ref_{stem}_center{R}.png"))
    with open(os.path.join(ROOT, "versions.txt"), "w") as f:
        f.write(f"Pillow {PIL.__version__}\ntorch {torch.__version__}\n"
                f"torchvision {torchvision.__version__}\nnumpy {np.__version__}\n")


if __name__ == "__main__":
    main()
