"""The training step of `hstu train` written independently in PyTorch.

One function, step_loss(), is the loss of a jagged batch of users under the
spec's model (../shared/spec/model.md 1.1-1.4) plus what training adds
(docs/train.md): dropout on the input embeddings and on u * LN(a) before the
output projection, sampled softmax over L2-normalised output and item rows
(retrieval) or per-task binary cross-entropy on the candidates (ranking).
Users are padded to the longest and attention is dense with a mask, the way
the HSTU paper's own code runs; autograd gives the gradients.

Used two ways:
  * tools/check_train_torch.py feeds it the batch, negatives and dropout masks
    that `hstu train --dump-step` used and compares the loss and every
    gradient with the C ones (float64 here);
  * `train_torch.py bench` times full training steps (forward, backward,
    AdamW) on MovieLens-1M in float32, for bench/train_vs_torch.sh.

Usage: /usr/bin/python3 tools/train_torch.py bench --data ml-1m.txt
           --config config.json [--steps 20] [--warmup 3] [--batch 128] [--threads 2]
Prints one line: "torch <tokens/s> tokens/s <steps> steps <tokens> tokens <seconds> s".
"""
import argparse
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hstu_torch as ht  # noqa: E402

TABLE_ITEM, TABLE_ACTION, TABLE_CONTEXT = 0, 1, 2
MASKED_LOGIT = -5e4  # a negative equal to the positive (the paper code's value)


def layer_norm(x, w, b, eps):
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    y = (x - mean) / torch.sqrt(var + eps)
    return y * w + b if w is not None else y


def l2n(x):
    return x / torch.clamp(torch.linalg.norm(x, dim=-1, keepdim=True), min=1e-6)


def batch_layout(batch):
    """Padding of a jagged batch: (B, Tm, flat index [B*Tm] -> row or T, row -> padded slot)."""
    off = np.asarray(batch["offsets"], dtype=np.int64)
    B = len(off) - 1
    lens = off[1:] - off[:-1]
    Tm = int(lens.max()) if B else 0
    T = int(off[-1])
    pad = np.full((B, Tm), T, dtype=np.int64)
    slot = np.empty(T, dtype=np.int64)
    for b in range(B):
        n = lens[b]
        pad[b, :n] = np.arange(off[b], off[b] + n)
        slot[off[b]:off[b] + n] = b * Tm + np.arange(n)
    return B, Tm, T, torch.from_numpy(pad), torch.from_numpy(slot)


def attention_mask(batch, B, Tm):
    """[B, Tm, Tm] 0/1: history rows causal, a candidate sees the history and itself."""
    off, hist = batch["offsets"], batch["hist"]
    mask = np.zeros((B, Tm, Tm))
    i = np.arange(Tm)[:, None]
    j = np.arange(Tm)[None, :]
    for b in range(B):
        n, h = off[b + 1] - off[b], hist[b]
        m = np.where(i < h, j <= i, (j < h) | (j == i)) & (i < n) & (j < n)
        mask[b] = m
    return mask


def relative_bias_index(cfg, batch, B, Tm):
    """Indices into pos_w [B, Tm, Tm] and ts_w [B, Tm, Tm] (spec 1.4)."""
    N = cfg["attn_scale_len"]
    off = batch["offsets"]
    i = np.arange(Tm)[:, None]
    j = np.arange(Tm)[None, :]
    rel = np.broadcast_to(np.clip(j - i, -(N - 1), N - 1) + N - 1, (B, Tm, Tm)).copy()
    bucket = np.zeros((B, Tm, Tm), dtype=np.int64)
    for b in range(B):
        n = off[b + 1] - off[b]
        ts = np.asarray(batch["ts"][off[b]:off[b + 1]], dtype=np.int64)
        nxt = np.append(ts[1:], np.int64(batch["query_time"][b]))
        bucket[b, :n, :n] = ht.time_bucket(nxt[:, None] - ts[None, :], cfg["rab_buckets"])
    return torch.from_numpy(rel), torch.from_numpy(bucket)


def step_loss(cfg, W, batch, temperature=0.05, drop=None, sup_rows=None, neg_ids=None,
              dropout=0.0, n_negatives=128, n_items=None, precomputed=None):
    """The loss of one batch. W: {name: tensor}. batch: numpy arrays as in
    `hstu train --dump-step` (offsets, hist, table, ids, pos, ts, query_time,
    target, labels). drop: {"input": [T*d], l: [T*H*Dv]} masks (0 or
    1/(1-rate)); None draws them with F.dropout(rate = dropout). sup_rows /
    neg_ids: the retrieval rows and their negatives; None draws them
    (uniform over 1..n_items). precomputed: the layout tensors from an earlier
    call on the same batch (benchmark reuse is not done: kept for clarity)."""
    d, H, Dqk, Dv = cfg["d_model"], cfg["n_heads"], cfg["d_qk"], cfg["d_v"]
    dtype = W["pos"].dtype
    B, Tm, T, pad, slot = batch_layout(batch)
    table = torch.as_tensor(np.asarray(batch["table"], dtype=np.int64))
    ids = torch.as_tensor(np.asarray(batch["ids"], dtype=np.int64))
    # embedding: each row from its table
    x = torch.zeros(T, d, dtype=dtype)
    names = {TABLE_ITEM: "emb.item", TABLE_ACTION: "emb.action"}
    for t in torch.unique(table).tolist():
        name = names.get(t, f"emb.context.{t - TABLE_CONTEXT}")
        rows = torch.nonzero(table == t).squeeze(1)
        x = x.index_put((rows,), W[name][ids[rows]])
    x = x * math.sqrt(d) + W["pos"][torch.as_tensor(np.asarray(batch["pos"], dtype=np.int64))]
    if drop is not None:
        x = x * drop["input"].view(T, d)
    elif dropout > 0:
        x = F.dropout(x, dropout, training=True)
    x = torch.cat([x, torch.zeros(1, d, dtype=dtype)])[pad]                 # [B, Tm, d]
    mask = torch.as_tensor(attention_mask(batch, B, Tm), dtype=dtype).unsqueeze(1)
    rab_idx = relative_bias_index(cfg, batch, B, Tm) if cfg["rab"] == "pos_time" else None
    hv = H * Dv
    for l in range(cfg["n_layers"]):
        p = f"layers.{l}."
        xn = layer_norm(x, W.get(p + "ln_in.weight"), W.get(p + "ln_in.bias"), cfg["ln_eps"])
        z = xn @ W[p + "uvqk.weight"]
        if cfg["uvqk_bias"]:
            z = z + W[p + "uvqk.bias"]
        u, v, q, k = torch.split(z, [hv, hv, H * Dqk, H * Dqk], dim=-1)
        u = F.silu(u)
        if cfg["silu_uvqk"] == "all":
            v, q, k = F.silu(v), F.silu(q), F.silu(k)
        q = q.reshape(B, Tm, H, Dqk).transpose(1, 2)
        k = k.reshape(B, Tm, H, Dqk).transpose(1, 2)
        v = v.reshape(B, Tm, H, Dv).transpose(1, 2)
        s = cfg["alpha"] * (q @ k.transpose(-1, -2))                           # [B, H, Tm, Tm]
        if rab_idx is not None:
            N = cfg["attn_scale_len"]
            if Tm <= N:  # pos_w[N-1 + j - i] as a Toeplitz view: row i is window N-1-i
                pos = W[p + "rab.pos"].unfold(0, Tm, 1)[N - 1 - torch.arange(Tm)]
            else:
                pos = W[p + "rab.pos"][rab_idx[0][0]]
            rab = pos.unsqueeze(0) + F.embedding(rab_idx[1], W[p + "rab.time"].unsqueeze(1)).squeeze(-1)
            s = s + rab.unsqueeze(1)
        s = F.silu(s) / cfg["attn_scale_len"] * mask
        a = (s @ v).transpose(1, 2).reshape(B, Tm, hv)
        y = u * layer_norm(a, W.get(p + "ln_out.weight"), W.get(p + "ln_out.bias"), cfg["ln_eps"])
        if drop is not None:
            m = torch.cat([drop[l].view(T, hv), torch.ones(1, hv, dtype=dtype)])[pad]
            y = y * m
        elif dropout > 0:
            y = F.dropout(y, dropout, training=True)
        x = x + y @ W[p + "proj.weight"]
        if cfg["proj_bias"]:
            x = x + W[p + "proj.bias"]
    out = x.reshape(B * Tm, d)[slot]                                           # [T, d] jagged
    if cfg["family"] == "retrieval":
        target = torch.as_tensor(np.asarray(batch["target"], dtype=np.int64))
        if sup_rows is None:
            sup_rows = torch.nonzero(target > 0).squeeze(1)
            neg_ids = torch.randint(1, n_items + 1, (len(sup_rows), n_negatives))
        q = l2n(out[sup_rows])
        unit = l2n(W["emb.item"])
        pos_ids = target[sup_rows]
        lp = (q * unit[pos_ids]).sum(-1, keepdim=True) / temperature
        ln = torch.einsum("rd,rkd->rk", q, unit[neg_ids]) / temperature
        ln = torch.where(neg_ids == pos_ids[:, None], torch.full_like(ln, MASKED_LOGIT), ln)
        logits = torch.cat([lp, ln], dim=1)
        return (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean()
    off, hist = batch["offsets"], batch["hist"]
    cand = np.concatenate([np.arange(off[b] + hist[b], off[b + 1]) for b in range(B)])
    cand = torch.from_numpy(cand.astype(np.int64))
    h = l2n(out[cand])
    nl = len(cfg["head"]["hidden"]) + 1
    for j in range(nl):
        h = h @ W[f"head.{j}.weight"] + W[f"head.{j}.bias"]
        if j < nl - 1:
            h = torch.relu(h)
    bits = torch.as_tensor(np.asarray(batch["labels"], dtype=np.int64))[cand]
    tasks = cfg["head"]["n_tasks"]
    labels = ((bits[:, None] >> torch.arange(tasks)[None, :]) & 1).to(dtype)
    return F.binary_cross_entropy_with_logits(h, labels)


# ---------------------------------------------------------------- benchmark

def read_sasrec(path):
    users = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) > 1:
                users.append([int(t) for t in parts[1:]])
    return users


def retrieval_batch(seqs, max_history):
    """The C trainer's retrieval example: items minus the test target, the
    newest max_history + 1 kept, each position predicting the next."""
    offsets, ids, pos, target = [0], [], [], []
    for s in seqs:
        s = s[:-1] if len(s) >= 3 else s
        s = s[-(max_history + 1):]
        n = len(s) - 1
        ids += s[:-1]
        target += s[1:]
        pos += list(range(n))
        offsets.append(offsets[-1] + n)
    T = offsets[-1]
    B = len(seqs)
    return {"offsets": np.array(offsets), "hist": np.diff(offsets), "table": np.zeros(T, np.int64),
            "ids": np.array(ids), "pos": np.array(pos), "ts": np.zeros(T, np.int64),
            "query_time": np.zeros(B, np.int64), "target": np.array(target),
            "labels": np.zeros(T, np.int64)}


def init_weights(cfg, seed):
    """The paper code's initialisation (as src/train/init.c), in torch."""
    g = torch.Generator().manual_seed(seed)
    W = {}
    for name, shape in ht.expected_shapes(cfg).items():
        if name.startswith("emb."):
            t = torch.randn(shape, generator=g).clamp_(-2.0, 2.0) * 0.02  # (clipped, not redrawn)
        elif name == "pos":
            t = torch.randn(shape, generator=g) * math.sqrt(2.0 / (shape[0] + shape[1]))
        elif name.endswith("uvqk.weight") or ".rab." in name:
            t = torch.randn(shape, generator=g) * 0.02
        elif name.endswith("ln_in.weight") or name.endswith("ln_out.weight"):
            t = torch.ones(shape)
        elif len(shape) == 2:
            a = math.sqrt(6.0 / (shape[0] + shape[1]))
            t = (torch.rand(shape, generator=g) * 2 - 1) * a
        else:
            t = torch.zeros(shape)
        W[name] = t.requires_grad_(True)
    return W


def cmd_bench(args):
    torch.set_num_threads(args.threads)
    import json
    with open(args.config) as f:
        cfg = ht.parse_config(json.load(f))
    users = read_sasrec(args.data)
    n_items = max(max(s) for s in users)
    W = init_weights(cfg, 1)
    opt = torch.optim.AdamW(list(W.values()), lr=1e-3, betas=(0.9, 0.98), weight_decay=0.0)
    rng = np.random.default_rng(1)
    order = rng.permutation(len(users))
    tokens, seconds = 0, 0.0
    for step in range(args.warmup + args.steps):
        pick = order[(step * args.batch) % len(users):][:args.batch]
        batch = retrieval_batch([users[i] for i in pick], cfg["max_history"])
        t0 = time.perf_counter()
        loss = step_loss(cfg, W, batch, dropout=args.dropout, n_negatives=128, n_items=n_items)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        dt = time.perf_counter() - t0
        if step >= args.warmup:
            tokens += int(batch["offsets"][-1])
            seconds += dt
    print(f"torch {tokens / seconds:.0f} tokens/s {args.steps} steps {tokens} tokens {seconds:.2f} s "
          f"loss {loss.item():.4f}")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bench", help="time training steps on a SASRec-format file")
    b.add_argument("--data", required=True)
    b.add_argument("--config", required=True)
    b.add_argument("--steps", type=int, default=20)
    b.add_argument("--warmup", type=int, default=3)
    b.add_argument("--batch", type=int, default=128)
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--dropout", type=float, default=0.2)
    b.set_defaults(func=cmd_bench)
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
