"""Holds one training step of `hstu train` against PyTorch autograd.

For small models of both families (retrieval with the relative time bias and
real timestamps; ranking with contextual features, candidates, SiLU on u only,
a projection bias), this writes a tiny raw dataset (MovieLens u.data layout,
KuaiRand CSV layout), prepares it with `hstu prep`, runs

    hstu train --data D --config C --fit-tables --out O --dump-step F ...

which performs the first step only and writes its inputs (weights, batch,
negatives, dropout masks) and outputs (loss, every parameter's gradient), and
recomputes the loss and the gradients with tools/train_torch.py (an
independent PyTorch implementation, float64, autograd) from those inputs:

    loss       |c - t| <= 1e-5 * |t|
    gradients  max|c - t| / max|t| <= 1e-5 per tensor (every tensor)

fp32 against fp64: the C step rounds in fp32 throughout (softmax logits at
temperature 0.05 amplify it 20x); the measured worst ratio is printed with
--verbose and recorded in docs/train.md. A case also checks that the
comparison fails on a perturbed gradient.

Usage: /usr/bin/python3 tools/check_train_torch.py --hstu build/hstu [--keep DIR] [--verbose]
Prints `ok    name` or `FAIL  name: details` per case, then
`N passed, N failed, 0 skipped`; exits 1 on any failure.
"""
import argparse
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hstu_torch as ht  # noqa: E402
import train_torch as tt  # noqa: E402

LOSS_RTOL = 1e-5
GRAD_RTOL = 1e-5
RUN_TIMEOUT_S = 120

RETRIEVAL = {
    "family": "retrieval", "d_model": 16, "n_layers": 2, "n_heads": 2, "d_qk": 6, "d_v": 5,
    "attn_scale_len": 40, "max_positions": 40, "tables": {"item": 2}, "max_history": 30,
    "rab_buckets": 20}
RANKING = {
    "family": "ranking", "d_model": 12, "n_layers": 2, "n_heads": 2, "d_qk": 4, "d_v": 6,
    "attn_scale_len": 80, "max_positions": 60,
    "tables": {"item": 2, "action": 256, "context": [1, 1]},
    "head": {"hidden": [10], "n_tasks": 8}, "silu_uvqk": "u", "proj_bias": True,
    "max_history": 20, "max_candidates": 4}


def read_dump(path):
    """-> ({name: float64 numpy array}, metadata dict)."""
    with open(path, "rb") as f:
        (hlen,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(hlen))
    meta = header.pop("__metadata__", {})
    arrays = ht.read_safetensors(path)
    return {k: v.astype(np.float64) for k, v in arrays.items()}, meta


def write_movielens(path, rng):
    """u.data: user item rating timestamp (tab); users of 3..25 items, time gaps
    from seconds to months so that many time buckets are used."""
    with open(path, "w") as f:
        for u in range(1, 19):
            n = rng.randint(3, 25)
            t = 880000000 + rng.randint(0, 10 ** 6)
            for _ in range(n):
                t += rng.choice([1, 30, 400, 9000, 200000, 5000000])
                f.write(f"{u}\t{rng.randint(1, 40)}\t{rng.randint(1, 5)}\t{t}\n")


KUAI_EVENTS = ["is_click", "is_like", "is_follow", "is_comment", "is_forward", "is_hate",
               "long_view", "is_profile_enter"]


def write_kuairand(dirname, rng):
    log = os.path.join(dirname, "log_standard_test.csv")
    feats = os.path.join(dirname, "user_features_test.csv")
    with open(log, "w") as f:
        f.write("user_id,video_id,date,hourmin,time_ms," + ",".join(KUAI_EVENTS) + "\n")
        for u in range(30):
            t = 1650000000000
            for _ in range(rng.randint(3, 14)):
                t += rng.randint(1000, 10 ** 7)
                ev = [1 if rng.random() < 0.3 + 0.05 * k else 0 for k in range(8)]
                f.write(f"{u},{rng.randint(0, 50)},20220401,1200,{t}," + ",".join(map(str, ev)) + "\n")
    with open(feats, "w") as f:
        f.write("user_id,user_active_degree,follow_user_num_range\n")
        for u in range(30):
            f.write(f"{u},{rng.choice(['high', 'low', 'middle'])},{rng.choice(['0', '1-10', '10+'])}\n")
    return log, feats


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}\n  exit {p.returncode}: {p.stderr.strip()[-800:]}")
    return p.stdout


def torch_step(dump, meta):
    """Loss and gradients of the dumped step, recomputed in float64."""
    cfg = ht.parse_config(json.loads(meta["config"]))
    W = {}
    for k, v in dump.items():
        if k.startswith("param."):
            shape = ht.expected_shapes(cfg)[k[6:]]
            W[k[6:]] = torch.tensor(v.reshape(shape), dtype=torch.float64, requires_grad=True)
    batch = {k[6:]: v.astype(np.int64) for k, v in dump.items() if k.startswith("batch.")}
    for key in ("ts", "query_time"):  # dumped as hi * 2^20 + lo (fp32 holds 24 bits)
        batch[key] = batch.pop(key + "_hi") * (1 << 20) + batch.pop(key + "_lo")
    T = int(batch["offsets"][-1])
    drop = {"input": torch.tensor(dump["drop.input"])}
    for l in range(cfg["n_layers"]):
        drop[l] = torch.tensor(dump[f"drop.{l}"])
    sup = neg = None
    if cfg["family"] == "retrieval":
        K = int(meta["negatives"])
        sup = torch.tensor(dump["sup_rows"].astype(np.int64))
        neg = torch.tensor(dump["neg_ids"].astype(np.int64)).view(len(sup), K)
    loss = tt.step_loss(cfg, W, batch, temperature=float(meta["temperature"]), drop=drop,
                        sup_rows=sup, neg_ids=neg)
    loss.backward()
    grads = {k: W[k].grad.detach().numpy().reshape(-1) for k in W}
    return loss.item(), grads, T


def compare(dump, loss_t, grads_t):
    """-> (worst gradient ratio, its tensor, list of failure strings)."""
    fails = []
    loss_c = float(dump["loss"][0])
    if not abs(loss_c - loss_t) <= LOSS_RTOL * abs(loss_t):
        fails.append(f"loss {loss_c:.8g} vs torch {loss_t:.8g}")
    worst, worst_name = 0.0, None
    for name, gt in grads_t.items():
        gc = dump.get("grad." + name)
        if gc is None:
            fails.append(f"no C gradient for {name}")
            continue
        gc = gc.reshape(-1)
        scale = max(np.abs(gt).max(), 1e-12)
        err = np.abs(gc - gt).max() / scale
        if not np.isfinite(err):
            err = np.inf
        if err > worst:
            worst, worst_name = err, name
        if err > GRAD_RTOL:
            fails.append(f"{name}: rel err {err:.2e} > {GRAD_RTOL:.0e} (max|grad| {scale:.3g})")
    return worst, worst_name, fails


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hstu", required=True)
    ap.add_argument("--keep", help="keep the work directory here")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    work = args.keep or tempfile.mkdtemp(prefix="check_train_")
    os.makedirs(work, exist_ok=True)
    rng = random.Random(6)
    passed = failed = 0

    def report(name, fails, extra=""):
        nonlocal passed, failed
        if fails:
            failed += 1
            print(f"FAIL  {name}: " + "; ".join(fails[:6]))
        else:
            passed += 1
            print(f"ok    {name}{extra}")
        sys.stdout.flush()

    cases = []
    try:
        ml = os.path.join(work, "u.data")
        write_movielens(ml, rng)
        run([args.hstu, "prep", "--format", "ml-100k", "--quiet", "--out", os.path.join(work, "ml.hstu"), ml])
        log, feats = write_kuairand(work, rng)
        run([args.hstu, "prep", "--format", "kuairand", "--quiet", "--user-features", feats,
             "--context", "user_active_degree,follow_user_num_range", "--candidates", "3",
             "--max-items", "12", "--train-frac", "1.0", "--out", os.path.join(work, "kr.hstu"), log])
        cases = [
            ("retrieval, time bias, dropout 0.3, 16 negatives, 2 threads", RETRIEVAL, "ml.hstu",
             ["--dropout", "0.3", "--negatives", "16", "--threads", "2", "--batch", "7"]),
            ("retrieval, no dropout, 5 negatives (collisions), 1 thread", RETRIEVAL, "ml.hstu",
             ["--dropout", "0", "--negatives", "5", "--threads", "1", "--batch", "18",
              "--temperature", "0.2"]),
            ("ranking, context, candidates, silu u, proj bias, dropout 0.2", RANKING, "kr.hstu",
             ["--dropout", "0.2", "--threads", "2", "--batch", "9"]),
        ]
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        report("prepare datasets", [str(e)])
    for i, (name, config, data, opts) in enumerate(cases):
        try:
            cfg_path = os.path.join(work, f"config{i}.json")
            with open(cfg_path, "w") as f:
                json.dump(config, f)
            dump_path = os.path.join(work, f"step{i}.safetensors")
            run([args.hstu, "train", "--data", os.path.join(work, data), "--config", cfg_path,
                 "--fit-tables", "--out", os.path.join(work, f"out{i}"), "--dump-step", dump_path,
                 "--seed", str(3 + i), "--no-progress"] + opts)
            dump, meta = read_dump(dump_path)
            loss_t, grads_t, T = torch_step(dump, meta)
            worst, worst_name, fails = compare(dump, loss_t, grads_t)
            extra = f"  ({T} rows, loss {loss_t:.5f}, worst grad rel err {worst:.1e} in {worst_name})" \
                if args.verbose else ""
            report(name, fails, extra)
            if i == 0:
                # the comparison must catch a wrong gradient
                bad = dict(dump)
                key = "grad.layers.1.uvqk.weight"
                bad[key] = bad[key].copy()
                bad[key].reshape(-1)[np.argmax(np.abs(bad[key]))] *= 1.01
                _, _, bad_fails = compare(bad, loss_t, grads_t)
                report("the comparison rejects a gradient 1% off in one element",
                       [] if bad_fails else ["a perturbed gradient passed"])
        except (RuntimeError, OSError, ValueError, KeyError, subprocess.TimeoutExpired) as e:
            report(name, [str(e)])
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{passed} passed, {failed} failed, 0 skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
