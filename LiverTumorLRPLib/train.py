"""``liver-lrp train``: the 3D u-net on on-the-fly phantom cases, and its evaluation on held-out cases.

Training data: a pool of phantom cases (seeds from ``--seed``), one case replaced every
``--refresh`` steps, so the network keeps seeing new anatomy; normalised with
:func:`intensity.normalise_image` exactly as at inference.  Patches are cropped at random,
centred on a tumor voxel with probability 0.7; augmentation: in-plane flips and a per-sequence
intensity scale and shift.  Loss: cross-entropy + soft Dice of the tumor class; Adam with a
cosine learning-rate decay.  Checkpoints: ``model.safetensors`` + ``model.json`` (config) and
``train_state.safetensors`` (optimizer state, step), written atomically; ``--resume`` continues.
Held-out evaluation uses seeds from 100000 on, which training never uses.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from .device import resolve_device
from .intensity import normalise_image
from .phantom import generate_case
from .sequences import SEQUENCE_KEYS
from .models import load_unet, save_model
from .unet import UNet3D, UNetConfig

EVAL_SEED = 100000


def case_arrays(seed: int, shape, spacing, **kw):
    """Normalised (6, z, y, x) stack and label of one phantom case."""
    c = generate_case(seed, shape, spacing, **kw)
    return normalise_image(np.stack([c.images[k] for k in SEQUENCE_KEYS]), list(SEQUENCE_KEYS)), c.label


def _crop(rng, image, label, patch):
    shape = image.shape[1:]
    patch = [min(p, s) for p, s in zip(patch, shape)]
    if label.any() and rng.random() < 0.7:
        idx = np.argwhere(label)
        centre = idx[rng.integers(len(idx))]
        start = [int(np.clip(c - p // 2 + rng.integers(-p // 4, p // 4 + 1), 0, s - p))
                 for c, p, s in zip(centre, patch, shape)]
    else:
        start = [int(rng.integers(0, s - p + 1)) for p, s in zip(patch, shape)]
    sl = tuple(slice(a, a + p) for a, p in zip(start, patch))
    return image[(slice(None),) + sl], label[sl]


def _augment(rng, image, label):
    if rng.random() < 0.5:
        image, label = image[:, :, :, ::-1], label[:, :, ::-1]
    if rng.random() < 0.5:
        image, label = image[:, :, ::-1], label[:, ::-1]
    scale = rng.uniform(0.9, 1.1, size=(image.shape[0], 1, 1, 1))
    shift = rng.uniform(-0.1, 0.1, size=(image.shape[0], 1, 1, 1))
    return (image * scale + shift).astype(np.float32), label.copy()


def loss_fn(logits, target):
    """Cross-entropy + (1 - soft Dice of the tumor class)."""
    ce = F.cross_entropy(logits, target)
    p = torch.softmax(logits, dim=1)[:, 1]
    t = (target == 1).float()
    dice = (2 * (p * t).sum() + 1.0) / (p.sum() + t.sum() + 1.0)
    return ce + (1 - dice)


def _save_state(out, step, optimizer):
    from safetensors.torch import save_file

    tensors, meta = {}, {"step": step, "param_groups": optimizer.state_dict()["param_groups"]}
    for pid, st in optimizer.state_dict()["state"].items():
        for k, v in st.items():
            tensors[f"{pid}.{k}"] = v.detach().cpu().contiguous() if torch.is_tensor(v) else torch.tensor(v)
    path = os.path.join(out, "train_state.safetensors")
    tmp = path + ".tmp"
    save_file(tensors, tmp, metadata={"meta": json.dumps(meta)})
    os.replace(tmp, path)


def _load_state(out, optimizer) -> int:
    from safetensors import safe_open

    path = os.path.join(out, "train_state.safetensors")
    with safe_open(path, "pt") as f:
        meta = json.loads(f.metadata()["meta"])
        state = {}
        for key in f.keys():
            pid, name = key.split(".", 1)
            state.setdefault(int(pid), {})[name] = f.get_tensor(key)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return int(meta["step"])


def train(out, steps=2000, patch=(32, 96, 96), batch=2, base_channels=8, depth=3, norm="batch", lr=2e-3,
          seed=0, device="auto", resume=False, pool=12, refresh=20, shape=(48, 128, 128),
          spacing=(4.0, 3.0, 3.0), save_every=100, progress=True, log=print, informative=None) -> str:
    """Train and return the path of ``model.safetensors`` in ``out``.

    ``informative``: sequence keys that alone carry tumor contrast (a known-truth phantom variant,
    :func:`phantom.generate_case`); recorded in ``model.json`` for ``liver-lrp validate``.
    """
    kw = {"informative": list(informative)} if informative else {}
    from tqdm import tqdm

    dev = resolve_device(device)
    os.makedirs(out, exist_ok=True)
    model_path = os.path.join(out, "model.safetensors")
    torch.manual_seed(seed)
    if resume and os.path.exists(model_path):
        model = load_unet(model_path).train()
    else:
        # the spacing it learns at and the whole-volume patch it is run with are part of the model
        model = UNet3D(UNetConfig(depth=depth, base_channels=base_channels, norm=norm, spacing=list(spacing),
                                  patch_size=[int(math.ceil(s / 2 ** depth) * 2 ** depth) for s in shape]))
    model.to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    start = _load_state(out, opt) if resume and os.path.exists(os.path.join(out, "train_state.safetensors")) else 0
    rng = np.random.default_rng([seed, start])
    next_seed = seed * 10000 + start // refresh + pool
    cases = [case_arrays(seed * 10000 + i + start // refresh, shape, spacing, **kw) for i in range(pool)]
    sched = lambda s: 0.5 * (1 + math.cos(math.pi * min(s / max(steps, 1), 1.0)))  # noqa: E731
    bar = tqdm(range(start, steps), desc="train", unit="step", disable=not progress, initial=start, total=steps)
    losses = []
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr * (0.05 + 0.95 * sched(step))
        if step > start and step % refresh == 0:
            cases[int(rng.integers(len(cases)))] = case_arrays(next_seed, shape, spacing, **kw)
            next_seed += 1
        xs, ys = [], []
        for _ in range(batch):
            img, lab = cases[int(rng.integers(len(cases)))]
            img, lab = _augment(rng, *_crop(rng, img, lab, patch))
            xs.append(img)
            ys.append(lab)
        x = torch.from_numpy(np.stack(xs)).to(dev)
        y = torch.from_numpy(np.stack(ys).astype(np.int64)).to(dev)
        model.train()
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        if (step + 1) % save_every == 0 or step + 1 == steps:
            save_model(model.eval(), model_path, extra={"trained_steps": step + 1, **kw})
            _save_state(out, step + 1, opt)
    bar.close()
    if start >= steps and not os.path.exists(model_path):
        save_model(model.eval(), model_path)
    return model_path


def evaluate(model_path, n_cases=20, seed=EVAL_SEED, shape=(48, 128, 128), spacing=(4.0, 3.0, 3.0),
             device="auto", progress=True, informative=None) -> list[float]:
    """Tumor Dice of the model on ``n_cases`` held-out phantom cases (one full-volume pass each)."""
    kw = {"informative": list(informative)} if informative else {}
    from tqdm import tqdm

    from .inference import predict
    from .models import load_model
    from .analysis import dice

    model = load_model(model_path)
    scores = []
    for i in tqdm(range(n_cases), desc="evaluate", unit="case", disable=not progress):
        image, label = case_arrays(seed + i, shape, spacing, **kw)
        prob = predict(model, image, device=device)
        scores.append(dice(prob > 0.5, label > 0))
    return scores


def add_arguments(p: argparse.ArgumentParser):
    p.add_argument("--out", help="folder for model.safetensors, model.json and train_state.safetensors")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--patch", type=int, nargs=3, default=[32, 96, 96], metavar=("Z", "Y", "X"))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--base-channels", type=int, default=8)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--norm", default="batch", choices=["batch", "instance"])
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--pool", type=int, default=12, help="phantom cases kept in memory")
    p.add_argument("--refresh", type=int, default=20, help="replace one pool case every N steps")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--shape", type=int, nargs=3, default=[48, 128, 128], metavar=("Z", "Y", "X"))
    p.add_argument("--spacing", type=float, nargs=3, default=[4.0, 3.0, 3.0], metavar=("Z", "Y", "X"))
    p.add_argument("--informative", nargs="+", metavar="KEY",
                   help="known-truth variant: tumor contrast only in these sequences (e.g. T1_120s)")
    p.add_argument("--evaluate", metavar="MODEL", help="instead of training: Dice of MODEL on held-out cases")
    p.add_argument("--cases", type=int, default=20, help="held-out cases for --evaluate")


def run(args) -> int:
    if args.evaluate:
        scores = evaluate(args.evaluate, args.cases, shape=args.shape, spacing=args.spacing, device=args.device,
                          informative=args.informative)
        print(json.dumps({"model": args.evaluate, "cases": len(scores), "mean_dice": float(np.mean(scores)),
                          "median_dice": float(np.median(scores)), "min_dice": float(np.min(scores)),
                          "dice": [round(s, 4) for s in scores]}, indent=2))
        return 0
    if not args.out:
        raise ValueError("--out is required for training")
    t0 = time.time()
    path = train(args.out, args.steps, tuple(args.patch), args.batch, args.base_channels, args.depth, args.norm,
                 args.lr, args.seed, args.device, args.resume, args.pool, args.refresh, tuple(args.shape),
                 tuple(args.spacing), informative=args.informative)
    print(f"model -> {path} ({time.time() - t0:.0f} s)")
    return 0
