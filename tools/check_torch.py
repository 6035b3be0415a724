"""Holds `hstu infer` against the independent PyTorch model (tools/hstu_torch.py).

For a set of small random configs of both families, written as F32, BF16 and
F16 checkpoints, this writes a request file full of edge cases (empty and
one-item histories, lengths that are no multiple of 8 or 32, the configured
maxima, zero candidates, returning users whose history grows, repeats,
is rewritten or shrinks, wide timestamp gaps), runs

    hstu infer --model DIR --requests FILE --logits --backend B [--no-cache] [--page-size P]

for both backends with the cache on (page sizes 1, 8 and the default, and one
batched run) and off, and compares every answer with a float64 full
recompute by the torch model, which reads the same checkpoint through its
own reader (so both sides see the same rounded weights):

    ranking    max|out - ref| / max|ref| <= 1e-4 on the logits of each request
    retrieval  top-k scores within 1e-4 of max|ref| and the ids equal, except
               where the two items' reference scores are within 1e-5

A second file mixes bad lines between good ones; each bad line must answer
{"error": ...} and the rest must still match.  A few cases need no binary:
the safetensors writer against torch's own rounding, the batched torch
forward against the per-user one, and the comparator rejecting wrong output.

Usage: /usr/bin/python3 tools/check_torch.py --hstu build/hstu [--keep DIR]
           [--only NAME] [--verbose]
(--hstu may also be a quoted command line, e.g. "/usr/bin/python3
tools/hstu_torch.py", to test this harness against the torch CLI itself;
--keep saves models, requests and answers; --verbose shows each case's
largest relative error.)
Prints `ok    name` or `FAIL  name: details` per case, then
`N passed, N failed, 0 skipped`; exits 1 on any failure.
"""
import argparse
import json
import math
import os
import random
import shlex
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hstu_torch as ht  # noqa: E402

LOGIT_RTOL = 1e-4   # spec section 5: fp32 against an fp64 reference, per request
SCORE_RTOL = 1e-4   # retrieval top-k scores, relative to the largest |score|
NEAR_TIE = 1e-5     # two items closer than this may swap places in the top-k
RUN_TIMEOUT_S = 120

CONFIGS = [
    ("rank-ctx2", "F32", {
        "family": "ranking", "d_model": 32, "n_layers": 2, "n_heads": 2, "d_qk": 16, "d_v": 8,
        "attn_scale_len": 64, "max_positions": 256,
        "tables": {"item": 400, "action": 8, "context": [5, 7]},
        "head": {"hidden": [24, 16], "n_tasks": 3}, "max_history": 50, "max_candidates": 12}),
    ("rank-silu-u", "BF16", {
        "family": "ranking", "d_model": 16, "n_layers": 1, "n_heads": 1, "d_qk": 16, "d_v": 16,
        "attn_scale_len": 32, "max_positions": 128,
        "tables": {"item": 300, "action": 4, "context": []},
        "head": {"hidden": [], "n_tasks": 2}, "silu_uvqk": "u",
        "max_history": 40, "max_candidates": 6}),
    ("rank-no-affine", "F16", {
        "family": "ranking", "d_model": 48, "n_layers": 3, "n_heads": 2, "d_qk": 24, "d_v": 24,
        "attn_scale_len": 100, "max_positions": 300,
        "tables": {"item": 500, "action": 16, "context": [11]},
        "head": {"hidden": [32], "n_tasks": 4, "task_names": ["click", "like", "follow", "long"]},
        "ln_affine": False, "alpha": 0.2, "ln_eps": 1e-6, "max_history": 45, "max_candidates": 9}),
    ("rank-proj-bias", "F32", {
        "family": "ranking", "d_model": 64, "n_layers": 2, "n_heads": 2, "d_qk": 32, "d_v": 16,
        "attn_scale_len": 80, "max_positions": 50,   # long histories hit POS[max_positions-1]
        "tables": {"item": 600, "action": 8, "context": [3, 4]},
        "head": {"hidden": [40, 20], "n_tasks": 5}, "uvqk_bias": False, "proj_bias": True,
        "max_history": 40, "max_candidates": 10}),
    ("rank-small", "F16", {
        "family": "ranking", "d_model": 24, "n_layers": 2, "n_heads": 1, "d_qk": 8, "d_v": 12,
        "attn_scale_len": 48, "max_positions": 200,
        "tables": {"item": 250, "action": 32, "context": [9, 2]},
        "head": {"hidden": [16, 8], "n_tasks": 6}, "max_history": 33, "max_candidates": 7}),
    ("retr-N20", "F32", {
        "family": "retrieval", "d_model": 32, "n_layers": 2, "n_heads": 1, "d_qk": 32, "d_v": 32,
        "attn_scale_len": 20, "max_positions": 64, "tables": {"item": 400},
        "rab_buckets": 32, "max_history": 60}),
    ("retr-heads2", "BF16", {
        "family": "retrieval", "d_model": 48, "n_layers": 3, "n_heads": 2, "d_qk": 16, "d_v": 24,
        "attn_scale_len": 16, "max_positions": 50, "tables": {"item": 300},
        "silu_uvqk": "u", "max_history": 50}),
    ("retr-no-rab", "F16", {
        "family": "retrieval", "d_model": 16, "n_layers": 1, "n_heads": 2, "d_qk": 8, "d_v": 8,
        "attn_scale_len": 40, "max_positions": 40, "tables": {"item": 60},
        "rab": "none", "proj_bias": True, "ln_affine": False, "max_history": 40}),
    ("retr-N10", "BF16", {
        "family": "retrieval", "d_model": 24, "n_layers": 2, "n_heads": 2, "d_qk": 12, "d_v": 12,
        "attn_scale_len": 10, "max_positions": 30, "tables": {"item": 500},
        "uvqk_bias": False, "max_history": 30}),
]

# (backend, extra flags, label): the cache on with three page sizes and off
RUNS = [(b, flags, f"{b} {label}") for b in ("ref", "cpu") for flags, label in (
    ([], "cache"), (["--page-size", "1"], "cache p=1"), (["--page-size", "8"], "cache p=8"),
    (["--no-cache"], "no-cache"))] + [("cpu", ["--page-size", "8", "--batch", "5"],
                                       "cpu cache p=8 batch=5")]


# ---------------------------------------------------------------- requests

def interleave(per_user, rng):
    """Merge per-user request lists in random order, keeping each user's order."""
    queues = [list(q) for q in per_user if q]
    out = []
    while queues:
        q = rng.choice(queues)
        out.append(q.pop(0))
        if not q:
            queues.remove(q)
    return out


def ranking_requests(cfg, rng):
    """[(label, request)] for a ranking config; labels name the edge case."""
    n_max, m_max = cfg["max_history"], cfg["max_candidates"]
    items_rows, act_rows, ctx_rows = (cfg["tables"]["item"], cfg["tables"]["action"],
                                      cfg["tables"]["context"])

    def ctx():
        return [rng.randrange(r) for r in ctx_rows]

    def hist(n):
        return [rng.randrange(1, items_rows) for _ in range(n)], \
               [rng.randrange(act_rows) for _ in range(n)]

    def cands(m):
        return rng.sample(range(1, items_rows), m)

    def req(user, c, items, actions, m):
        return {"user_id": user, "context": c, "items": list(items), "actions": list(actions),
                "candidates": cands(m)}

    users = []
    c = ctx()
    i, a = hist(13)
    users.append([("empty history", req(101, c, [], [], 3)),
                  ("returns after empty history", req(101, c, i[:5], a[:5], 2)),
                  ("same history again", req(101, c, i[:5], a[:5], m_max))])
    c = ctx()
    i, a = hist(1)
    users.append([("one-item history", req(102, c, i, a, 1))])
    c = ctx()
    i, a = hist(n_max)
    users.append([("max history, max candidates", req(103, c, i, a, m_max)),
                  ("max history again", req(103, c, i, a, m_max))])
    c = ctx()
    i, a = hist(n_max)
    grow = [("grow 3", 3), ("grow 11", 11), ("grow 30", min(30, n_max)),
            ("repeat 30", min(30, n_max))]
    seq = [(label, req(104, c, i[:n], a[:n], rng.randrange(1, m_max + 1))) for label, n in grow]
    i2 = list(i)
    i2[2] = (i2[2] % (items_rows - 1)) + 1
    seq.append(("rewritten item", req(104, c, i2[:30], a[:30], 4)))
    seq.append(("grow after rewrite", req(104, c, i2[:min(35, n_max)], a[:min(35, n_max)], 4)))
    seq.append(("shrunk to a prefix", req(104, c, i2[:20], a[:20], 4)))
    seq.append(("grow after shrink", req(104, c, i2[:21], a[:21], 4)))
    users.append(seq)
    c = ctx()
    i, a = hist(25)
    a2 = list(a)
    a2[7] = (a2[7] + 1) % act_rows
    users.append([("actions first", req(105, c, i[:17], a[:17], 5)),
                  ("rewritten action", req(105, c, i[:25], a2[:25], 5))])
    if ctx_rows:
        c = ctx()
        i, a = hist(19)
        c2 = list(c)
        c2[-1] = (c2[-1] + 1) % ctx_rows[-1]
        users.append([("context first", req(106, c, i[:9], a[:9], 3)),
                      ("rewritten context", req(106, c2, i[:19], a[:19], 3))])
    c = ctx()
    i, a = hist(n_max)
    users.append([("zero candidates", req(107, c, i[:17], a[:17], 0)),
                  ("grow to max after zero candidates", req(107, c, i, a, m_max))])
    for u in range(8):  # random users, some returning
        c = ctx()
        i, a = hist(n_max)
        ns = sorted(rng.randrange(0, n_max + 1) for _ in range(rng.randrange(1, 4)))
        users.append([("random", req(200 + u, c, i[:n], a[:n], rng.randrange(0, m_max + 1)))
                      for n in ns])
    return interleave(users, rng)


def timestamps(n, rng, start=1_700_000_000):
    """Non-decreasing unix times with gaps from 0 s to years."""
    gaps = [0, 1, 7, 60, 3600, 86400, 1_000_000, 30_000_000, 400_000_000]
    t, out = start, []
    for _ in range(n):
        t += rng.choice(gaps) + rng.randrange(0, 3)
        out.append(t)
    return out


def retrieval_requests(cfg, rng):
    """[(label, request)] for a retrieval config."""
    n_max, rows, N = cfg["max_history"], cfg["tables"]["item"], cfg["attn_scale_len"]

    def req(user, items, ts, top_k, query_gap=None, exclude=None):
        gap = rng.choice([0, 5, 3600, 50_000_000]) if query_gap is None else query_gap
        r = {"user_id": user, "items": list(items), "timestamps": list(ts),
             "query_time": ts[-1] + gap, "top_k": top_k}
        if exclude is not None:
            r["exclude_history"] = exclude
        return r

    def hist(n):
        return [rng.randrange(1, rows) for _ in range(n)], timestamps(n, rng)

    users = []
    i, t = hist(1)
    users.append([("one-item history", req(301, i, t, 5))])
    i, t = hist(n_max)
    users.append([("max history", req(302, i, t, 10)),
                  ("max history, later query time", req(302, i, t, 10, query_gap=9_999_999))])
    i, t = hist(n_max)
    lens = sorted({2, 9, min(N + 5, n_max), n_max})
    seq = [(f"grow {n}", req(303, i[:n], t[:n], 7)) for n in lens]
    seq.append((f"repeat {n_max}", req(303, i, t, 7, query_gap=17)))
    users.append(seq)
    i, t = hist(n_max)
    i2 = list(i)
    i2[1] = (i2[1] % (rows - 1)) + 1
    k = min(33, n_max)
    users.append([("before rewrite", req(304, i[:k], t[:k], 8)),
                  ("rewritten item", req(304, i2[:k], t[:k], 8)),
                  ("shrunk to a prefix", req(304, i2[:5], t[:5], 8)),
                  ("grow after shrink", req(304, i2[:k - 1], t[:k - 1], 8))])
    i, t = hist(12)
    users.append([("keep history ids", req(305, i[:12], t[:12], 6, exclude=False)),
                  ("exclude history ids", req(305, i[:12], t[:12], 6, exclude=True))])
    i, t = hist(min(30, n_max))
    users.append([("top_k above the eligible items", req(306, i, t, rows + 5))])
    for u in range(8):
        i, t = hist(n_max)
        ns = sorted(rng.randrange(1, n_max + 1) for _ in range(rng.randrange(1, 4)))
        users.append([("random", req(400 + u, i[:n], t[:n], rng.randrange(1, 20))) for n in ns])
    return interleave(users, rng)


def timestamp_rewrite_requests(cfg, rng):
    """A returning user whose earlier timestamps (not ids) change: the cached
    K/V of layers >= 2 depend on them, so a full recompute is owed."""
    n = min(24, cfg["max_history"])
    items = [rng.randrange(1, cfg["tables"]["item"]) for _ in range(n)]
    t = timestamps(n, rng)
    t2 = list(t)
    for j in range(n // 2):
        t2[j] -= 5_000_000 * (j + 1)
    first = {"user_id": 9, "items": items[:n - 4], "timestamps": t[:n - 4],
             "query_time": t[n - 5] + 60, "top_k": 10}
    second = {"user_id": 9, "items": items, "timestamps": t2, "query_time": t2[-1] + 60,
              "top_k": 10}
    return [("first", first), ("earlier timestamps rewritten", second)]


def bad_lines(cfg, rng):
    """[(label, line)]: lines that must each answer {"error": ...}."""
    n_over = cfg["max_history"] + 1
    if cfg["family"] == "ranking":
        k = len(cfg["tables"]["context"])
        good = {"user_id": 501, "context": [0] * k, "items": [1, 2], "actions": [0, 1],
                "candidates": [3]}
        variants = [
            ("items is a string", {"items": "1,2"}),
            ("candidate is a string", {"candidates": [3, "x"]}),
            ("action is a fraction", {"actions": [0, 1.5]}),
            ("user_id is a string", {"user_id": "seven"}),
            ("item id out of range", {"items": [1, cfg["tables"]["item"]]}),
            ("action id out of range", {"actions": [0, cfg["tables"]["action"]]}),
            ("negative candidate id", {"candidates": [-1]}),
            ("items and actions differ in length", {"actions": [0]}),
            ("history over max_history", {"items": [1] * n_over, "actions": [0] * n_over}),
            ("unknown field", {"top_k": 3}),
        ]
        if k:
            variants.append(("context id out of range",
                             {"context": [cfg["tables"]["context"][0]] + [0] * (k - 1)}))
            variants.append(("one context id too few", {"context": [0] * (k - 1)}))
    else:
        good = {"user_id": 501, "items": [1, 2], "timestamps": [100, 200], "query_time": 300,
                "top_k": 3}
        variants = [
            ("timestamps is a string", {"timestamps": "100,200"}),
            ("top_k is a string", {"top_k": "3"}),
            ("item is a fraction", {"items": [1, 2.5]}),
            ("item id out of range", {"items": [1, cfg["tables"]["item"]]}),
            ("negative item id", {"items": [-4, 2]}),
            ("items and timestamps differ in length", {"timestamps": [100]}),
            ("top_k zero", {"top_k": 0}),
            ("history over max_history",
             {"items": [1] * n_over, "timestamps": list(range(n_over))}),
            ("empty history", {"items": [], "timestamps": []}),
            ("exclude_history is a string", {"exclude_history": "no"}),
            ("unknown field", {"candidates": [1]}),
        ]
    out = [("invalid JSON", '{"user_id": 5, "items": [1, 2'), ("not JSON", "hello")]
    for label, change in variants:
        r = dict(good)
        r.update(change)
        out.append((label, json.dumps(r)))
    return out


def with_bad_lines(good, bad, rng):
    """Good requests with the bad lines spread between them.
    Returns [(label, line, request or None)]."""
    out = [(label, json.dumps(r), r) for label, r in good]
    for label, line in bad:
        out.insert(rng.randrange(1, len(out)), ("bad: " + label, line, None))
    return out


# ---------------------------------------------------------------- reference

def reference(model, req):
    """What a correct answer must match: ranking logits [m, T] (float64), or
    for retrieval the score of every item and the eligible-id mask."""
    if model["config"]["family"] == "ranking":
        return ht.forward_ranking(model, req["context"], req["items"], req["actions"],
                                  req["candidates"]).numpy()
    scores = ht.retrieval_scores(model, req["items"], req["timestamps"],
                                 req["query_time"]).numpy()
    eligible = np.ones(len(scores), dtype=bool)
    eligible[0] = False
    if req.get("exclude_history", True):
        eligible[np.array(req["items"], dtype=np.int64)] = False
    return scores, eligible


def is_number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def compare(cfg, req, ref, got, worst=None):
    """None when the answer `got` (a parsed JSON object) matches, else why not.
    worst, a list of one float, collects the largest relative error seen."""
    if not isinstance(got, dict):
        return f"answer is not an object: {str(got)[:80]}"
    if "error" in got:
        return f"engine answered an error: {got['error']}"
    if got.get("user_id") != req["user_id"]:
        return f"user_id {got.get('user_id')!r}, expected {req['user_id']}"
    if cfg["family"] == "ranking":
        scores = got.get("scores")
        m, T = ref.shape
        if (not isinstance(scores, list) or len(scores) != m
                or not all(isinstance(r, list) and len(r) == T for r in scores)):
            return f"scores should be {m} lists of {T} numbers, got {str(scores)[:80]}"
        if not all(is_number(x) for r in scores for x in r):
            return "scores hold a non-number, NaN or Inf"
        if m == 0:
            return None
        out = np.array(scores, dtype=np.float64)
        err = np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-30)
        if worst is not None:
            worst[0] = max(worst[0], err)
        if not err <= LOGIT_RTOL:
            return f"max|out-ref|/max|ref| = {err:.3g} > {LOGIT_RTOL:g}"
        return None
    ids, scores = got.get("items"), got.get("scores")
    ref_scores, eligible = ref
    want = min(req["top_k"], int(eligible.sum()))
    if not isinstance(ids, list) or not isinstance(scores, list):
        return "answer lacks items or scores lists"
    if len(ids) != want or len(scores) != want:
        return f"{len(ids)} ids and {len(scores)} scores, expected {want}"
    if not all(ht._is_int(i) for i in ids) or not all(is_number(s) for s in scores):
        return "ids must be integers and scores finite numbers"
    if len(set(ids)) != len(ids):
        return f"repeated id in {ids}"
    for i in ids:
        if not (0 <= i < len(ref_scores)) or not eligible[i]:
            return f"id {i} may not be returned (padding, history or out of range)"
    order = np.lexsort((np.arange(len(ref_scores)), -np.where(eligible, ref_scores, -np.inf)))
    top = order[:want]
    scale = max(np.abs(ref_scores[top]).max(), 1e-30)
    if worst is not None and want:
        worst[0] = max(worst[0], np.abs(np.array(scores) - ref_scores[top]).max() / scale)
    for r, (i, s) in enumerate(zip(ids, scores)):
        if abs(s - ref_scores[top[r]]) > SCORE_RTOL * scale:
            return f"rank {r}: score {s:.7g}, reference {ref_scores[top[r]]:.7g}"
        if abs(s - ref_scores[i]) > SCORE_RTOL * scale:
            return f"rank {r}: id {i} scored {s:.7g}, its reference score is {ref_scores[i]:.7g}"
        if i != top[r] and abs(ref_scores[i] - ref_scores[top[r]]) > NEAR_TIE:
            return (f"rank {r}: id {i} (ref {ref_scores[i]:.7g}), expected id {top[r]} "
                    f"(ref {ref_scores[top[r]]:.7g})")
    return None


# ---------------------------------------------------------------- running hstu

def run_hstu(cmd, model_dir, req_path, backend, flags, logits=True):
    """Run `hstu infer`; returns (parsed answers, None) or (None, why it failed)."""
    argv = cmd + ["infer", "--model", model_dir, "--requests", req_path, "--backend", backend]
    argv += (["--logits"] if logits else []) + flags
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    except FileNotFoundError:
        return None, f"cannot start {cmd[0]}: not found"
    except PermissionError:
        return None, f"cannot start {cmd[0]}: not executable"
    except subprocess.TimeoutExpired:
        return None, f"{' '.join(argv)} ran past {RUN_TIMEOUT_S} s"
    if p.returncode != 0:
        tail = (p.stderr.strip().splitlines() or ["(no stderr)"])[-1]
        return None, f"exit {p.returncode}: {tail}"
    answers = []
    for n, line in enumerate(p.stdout.splitlines()):
        try:
            answers.append(json.loads(line))
        except ValueError:
            return None, f"output line {n + 1} is not JSON: {line[:80]}"
    return answers, None


def check_answers(cfg, cases, refs, answers, worst=None):
    """cases: [(label, line, request or None)]; None when all match, else why not."""
    if len(answers) != len(cases):
        return f"{len(answers)} answer lines for {len(cases)} requests"
    for n, ((label, _, req), ref, got) in enumerate(zip(cases, refs, answers)):
        if req is None:
            if not (isinstance(got, dict) and isinstance(got.get("error"), str) and got["error"]):
                return f"line {n + 1} ({label}): expected an error, got {str(got)[:80]}"
            continue
        why = compare(cfg, req, ref, got, worst)
        if why:
            return f"line {n + 1} (user {req['user_id']}, {label}): {why}"
    return None


# ---------------------------------------------------------------- cases

def report(tally, name, why, worst=None):
    """Print one case's line and count it in tally {"passed": n, "failed": n};
    with --verbose an ok line also shows the largest relative error."""
    if why is None:
        tally["passed"] += 1
        extra = f"  (max rel err {worst[0]:.2g})" if worst and tally["verbose"] else ""
        print(f"ok    {name}{extra}", flush=True)
    else:
        tally["failed"] += 1
        print(f"FAIL  {name}: {why}", flush=True)


def check_safetensors_rounding(workdir):
    """Our writer and reader against torch's own conversions (round to nearest even)."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1000, generator=g) * torch.logspace(-6, 4, 1000)
    x[:4] = torch.tensor([0.0, -0.0, 1.0, -65504.0])
    for dtype, tdt in (("F32", torch.float32), ("BF16", torch.bfloat16), ("F16", torch.float16)):
        path = os.path.join(workdir, f"round.{dtype}.safetensors")
        ht.write_safetensors(path, {"x": x.reshape(10, 100)}, dtype)
        back = torch.from_numpy(ht.read_safetensors(path)["x"]).reshape(-1)
        want = x.to(tdt).float()
        if not torch.equal(back, want):
            bad = int((back != want).nonzero()[0])
            return f"{dtype}: value {x[bad].item()!r} read back as {back[bad].item()!r}, " \
                   f"torch rounds it to {want[bad].item()!r}"
    return None


def check_fast_forward(model64, requests):
    """The batched float32 torch forward (used by the benchmark) against the oracle."""
    model32 = ht.model_to(model64, torch.float32)
    parsed = [(r["context"], r["items"], r["actions"], r["candidates"]) for _, r in requests]
    outs = ht.forward_ranking_fast(model32, parsed, block=8)
    for (label, r), out in zip(requests, outs):
        ref = reference(model64, r)
        if ref.size == 0:
            continue
        err = np.abs(out.double().numpy() - ref).max() / np.abs(ref).max()
        if not err <= LOGIT_RTOL:
            return f"user {r['user_id']} ({label}): relative error {err:.3g}"
    return None


def check_comparator_fails(cfg_r, model_r, reqs_r, cfg_q, model_q, reqs_q):
    """A harness that cannot fail is a defect: wrong answers must be rejected."""
    req = next(r for _, r in reqs_r if len(r["candidates"]) >= 2)
    ref = reference(model_r, req)
    good = {"user_id": req["user_id"], "scores": ref.tolist()}
    if compare(cfg_r, req, ref, good):
        return "the reference itself was rejected"
    bad = ref.copy()
    bad[1, 0] += 3 * LOGIT_RTOL * np.abs(ref).max()
    if compare(cfg_r, req, ref, {"user_id": req["user_id"], "scores": bad.tolist()}) is None:
        return "a logit off by 3x the tolerance was accepted"
    req = next(r for _, r in reqs_q if r["top_k"] >= 3)
    ref = reference(model_q, req)
    ids, scores = ht.top_k_ids(torch.from_numpy(ref[0]), req["top_k"],
                               set(req["items"]) if req.get("exclude_history", True) else set())
    if compare(cfg_q, req, ref, {"user_id": req["user_id"], "items": ids, "scores": scores}):
        return "the reference top-k was rejected"
    gap = ref[0][ids[0]] - ref[0][ids[1]]
    swapped = [ids[1], ids[0]] + ids[2:]
    if gap > NEAR_TIE and compare(cfg_q, req, ref, {"user_id": req["user_id"],
                                                    "items": swapped, "scores": scores}) is None:
        return "two swapped ids with distinct scores were accepted"
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hstu", required=True, help="path to the hstu binary (or a command line)")
    ap.add_argument("--keep", help="write models, requests and answers here and keep them")
    ap.add_argument("--only", help="run only configs whose name contains this")
    ap.add_argument("--verbose", action="store_true", help="show the largest error of each case")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)

    tally = {"passed": 0, "failed": 0, "verbose": args.verbose}
    cmd = shlex.split(args.hstu)
    workdir = args.keep or tempfile.mkdtemp(prefix="check_torch.")
    os.makedirs(workdir, exist_ok=True)
    try:
        binary_ok = bool(cmd) and (shutil.which(cmd[0]) is not None or
                                   (os.path.isfile(cmd[0]) and os.access(cmd[0], os.X_OK)))
        report(tally, "hstu binary present",
               None if binary_ok else f"{args.hstu}: not found or not executable (build it "
                                      "with make); the cases that run it are left out")
        report(tally, "safetensors F32/BF16/F16 rounding", check_safetensors_rounding(workdir))
        first = {}
        for n, (name, dtype, config) in enumerate(CONFIGS):
            if args.only and args.only not in name:
                continue
            check_config(tally, cmd if binary_ok else None, workdir, n, name, dtype, config,
                         first, bool(args.keep))
        if "ranking" in first and "retrieval" in first:
            report(tally, "comparator rejects wrong answers",
                   check_comparator_fails(*first["ranking"], *first["retrieval"]))
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"{tally['passed']} passed, {tally['failed']} failed, 0 skipped")
    return 1 if tally["failed"] else 0


def write_lines(path, lines):
    with open(path, "w") as f:
        for line in lines:
            f.write(line + "\n")


def check_config(tally, cmd, workdir, seed, name, dtype, config, first, keep):
    """All cases of one config: write it, compute references, run hstu
    (cmd None: only the torch-side cases).  keep: save every answer file."""
    rng = random.Random(1000 + seed)
    model_dir = os.path.join(workdir, name)
    ht.write_checkpoint(model_dir, config, ht.random_model(config, seed), dtype)
    model = ht.load_model(model_dir, torch.float64)   # the rounded weights, as stored
    cfg = model["config"]
    tag = f"{name}/{dtype}"
    ranking = cfg["family"] == "ranking"
    good = ranking_requests(cfg, rng) if ranking else retrieval_requests(cfg, rng)
    first.setdefault(cfg["family"], (cfg, model, good))
    if ranking:
        report(tally, f"{tag} torch batched forward vs per-user", check_fast_forward(model, good))

    files = [("", [(label, json.dumps(r), r) for label, r in good], RUNS)]
    files.append((" bad lines", with_bad_lines(good[:10], bad_lines(cfg, rng), rng),
                  [RUNS[0], RUNS[4]]))
    if not ranking and cfg["rab"] == "pos_time":
        files.append((" timestamps rewritten", [(l, json.dumps(r), r) for l, r in
                                                timestamp_rewrite_requests(cfg, rng)],
                      [RUNS[0], RUNS[1], RUNS[4], RUNS[5]]))
    for suffix, cases, runs in files:
        path = os.path.join(model_dir, f"requests{suffix.replace(' ', '_')}.jsonl")
        write_lines(path, [line for _, line, _ in cases])
        refs = [reference(model, r) if r is not None else None for _, _, r in cases]
        for backend, flags, label in runs:
            if cmd is None:
                continue
            answers, why = run_hstu(cmd, model_dir, path, backend, flags)
            worst = [0.0]
            if answers is not None:
                why = check_answers(cfg, cases, refs, answers, worst)
                if why or keep:
                    write_lines(os.path.join(model_dir, f"answers{suffix.replace(' ', '_')}."
                                             f"{label.replace(' ', '_')}.jsonl"),
                                [json.dumps(a) for a in answers])
            report(tally, f"{tag}{suffix} {label}", why, worst)
    if ranking and cmd is not None:
        # probabilities (no --logits): sigmoid moves by at most 1/4 of the logit error
        cases = files[0][1]
        refs = [reference(model, r) for _, _, r in cases]
        case = f"{tag} probabilities cpu cache"
        answers, why = run_hstu(cmd, model_dir, os.path.join(model_dir, "requests.jsonl"),
                                "cpu", [], logits=False)
        if answers is not None:
            why = None if len(answers) == len(cases) else \
                f"{len(answers)} answer lines for {len(cases)} requests"
            for (label, _, r), ref, got in zip(cases, refs, answers):
                if why or ref.size == 0:
                    continue
                scores = got.get("scores") if isinstance(got, dict) else None
                try:
                    out = np.array(scores, dtype=np.float64).reshape(ref.shape)
                except (TypeError, ValueError):
                    why = f"user {r['user_id']} ({label}): bad scores {str(scores)[:80]}"
                    continue
                err = np.abs(out - 1 / (1 + np.exp(-ref))).max()
                if not err <= LOGIT_RTOL * np.abs(ref).max() / 4 + 1e-7:
                    why = f"user {r['user_id']} ({label}): probability error {err:.3g}"
        report(tally, case, why)


if __name__ == "__main__":
    sys.exit(main())
