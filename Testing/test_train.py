"""Training: a few steps on tiny phantom cases write safetensors + config, resume continues, evaluation."""
from __future__ import annotations

import json
import os

import numpy as np
from safetensors import safe_open

from LiverTumorLRPLib.train import evaluate, train

TINY = dict(shape=(16, 32, 32), spacing=(8.0, 8.0, 8.0), patch=(16, 32, 32), batch=1, base_channels=4, depth=2,
            pool=2, refresh=3, progress=False)


def test_train_resume_and_evaluate(tmp_path):
    out = str(tmp_path / "run")
    path = train(out, steps=4, save_every=2, **TINY)
    assert os.path.exists(path) and os.path.exists(os.path.join(out, "model.json"))
    cfg = json.load(open(os.path.join(out, "model.json")))
    assert cfg["trained_steps"] == 4 and cfg["base_channels"] == 4 and cfg["depth"] == 2
    with safe_open(os.path.join(out, "train_state.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["meta"])["step"] == 4
        assert any(k.endswith("exp_avg") for k in f.keys())
    with safe_open(path, "pt") as f:
        before = {k: f.get_tensor(k).clone() for k in f.keys()}
    train(out, steps=6, save_every=2, resume=True, **TINY)
    assert json.load(open(os.path.join(out, "model.json")))["trained_steps"] == 6
    with safe_open(path, "pt") as f:
        changed = [k for k in f.keys() if k.endswith("weight") and not np.allclose(f.get_tensor(k), before[k])]
    assert changed
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]
    scores = evaluate(path, n_cases=2, shape=(16, 32, 32), spacing=(8.0, 8.0, 8.0), device="cpu", progress=False)
    assert len(scores) == 2 and all(0.0 <= s <= 1.0 for s in scores)


def test_training_needs_an_output_folder():
    from LiverTumorLRPLib.cli import main

    assert main(["train", "--steps", "1"]) == 1
