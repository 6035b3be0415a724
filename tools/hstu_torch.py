"""Independent PyTorch reference of the HSTU model (shared/spec/model.md).

Written from the spec alone, so that the C engine can be held against it:
the checkpoint reader and writer (safetensors, done by hand with struct and
json: F32, BF16 and F16), config validation with the spec's defaults, and the
two model families as plain dense math on one user at a time:

    forward_ranking(model, context_ids, items, actions, candidates) -> logits [m, T]
    forward_retrieval(model, items, timestamps, query_time, top_k)   -> (ids, scores)

Those per-user functions are the oracle: full recompute, a dense mask, no
cache, float64 when asked.  forward_ranking_fast() is a batched float32
version for the CPU benchmark (tools/bench_torch.py); tools/check_torch.py
holds it against the oracle.

CLI (run with Debian's /usr/bin/python3, which has torch):
    hstu_torch.py infer --model DIR --requests FILE [--logits] [--fp64]
        reads the JSON-lines requests of `hstu infer` and prints the same
        JSON-lines answers, so the two can be diffed.  --backend, --no-cache,
        --page-size and --batch are accepted and ignored.
    hstu_torch.py random --config JSON --out DIR [--seed S] [--dtype F32|BF16|F16]
        writes a model with random weights.
"""
import argparse
import json
import math
import os
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

# ---------------------------------------------------------------- config

REQUIRED_KEYS = ("family", "d_model", "n_layers", "n_heads", "d_qk", "d_v",
                 "attn_scale_len", "max_positions", "tables")
OPTIONAL_KEYS = ("head", "alpha", "ln_eps", "ln_affine", "uvqk_bias", "silu_uvqk",
                 "proj_bias", "rab", "rab_buckets", "max_history", "max_candidates")


def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def _positive_int(raw, key, minimum=1):
    x = raw[key]
    if not _is_int(x) or x < minimum:
        raise ValueError(f"config: {key} must be an integer >= {minimum}, got {x!r}")
    return x


def parse_config(raw):
    """Validate a config object and fill in the spec's defaults (section 2).
    Returns a new dict; raises ValueError naming the key on anything wrong."""
    if not isinstance(raw, dict):
        raise ValueError("config: expected a JSON object")
    for key in raw:
        if key not in REQUIRED_KEYS and key not in OPTIONAL_KEYS:
            raise ValueError(f"config: unknown key {key!r}")
    for key in REQUIRED_KEYS:
        if key not in raw:
            raise ValueError(f"config: missing key {key!r}")
    cfg = {}
    family = raw["family"]
    if family not in ("ranking", "retrieval"):
        raise ValueError(f"config: family must be 'ranking' or 'retrieval', got {family!r}")
    cfg["family"] = family
    for key in ("d_model", "n_layers", "n_heads", "d_qk", "d_v", "attn_scale_len",
                "max_positions"):
        cfg[key] = _positive_int(raw, key)

    tables = raw["tables"]
    if not isinstance(tables, dict):
        raise ValueError("config: tables must be an object")
    allowed = ("item", "action", "context") if family == "ranking" else ("item", "context")
    for key in tables:
        if key not in allowed:
            raise ValueError(f"config: unknown key 'tables.{key}' for family {family}")
    if not _is_int(tables.get("item")) or tables["item"] < 1:
        raise ValueError("config: tables.item must be an integer >= 1")
    cfg["tables"] = {"item": tables["item"], "context": []}
    if family == "ranking":
        if not _is_int(tables.get("action")) or tables["action"] < 1:
            raise ValueError("config: tables.action must be an integer >= 1")
        cfg["tables"]["action"] = tables["action"]
    context = tables.get("context", [])
    if not isinstance(context, list) or not all(_is_int(r) and r >= 1 for r in context):
        raise ValueError("config: tables.context must be a list of integers >= 1")
    if family == "retrieval" and context:
        raise ValueError("config: tables.context must be empty for family retrieval")
    cfg["tables"]["context"] = list(context)

    if family == "ranking":
        head = raw.get("head")
        if not isinstance(head, dict):
            raise ValueError("config: head (an object) is required for family ranking")
        for key in head:
            if key not in ("hidden", "n_tasks", "task_names"):
                raise ValueError(f"config: unknown key 'head.{key}'")
        hidden = head.get("hidden", [])
        if not isinstance(hidden, list) or not all(_is_int(h) and h >= 1 for h in hidden):
            raise ValueError("config: head.hidden must be a list of integers >= 1")
        n_tasks = head.get("n_tasks")
        if not _is_int(n_tasks) or n_tasks < 1:
            raise ValueError("config: head.n_tasks must be an integer >= 1")
        cfg["head"] = {"hidden": list(hidden), "n_tasks": n_tasks}
        if "task_names" in head:
            names = head["task_names"]
            if (not isinstance(names, list) or len(names) != n_tasks
                    or not all(isinstance(s, str) for s in names)):
                raise ValueError("config: head.task_names must be n_tasks strings")
            cfg["head"]["task_names"] = list(names)
    elif "head" in raw:
        raise ValueError("config: head is only for family ranking")

    alpha = raw.get("alpha", 1.0 / math.sqrt(cfg["d_qk"]))
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha):
        raise ValueError(f"config: alpha must be a finite number, got {alpha!r}")
    cfg["alpha"] = float(alpha)
    eps = raw.get("ln_eps", 1e-5)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps > 0:
        raise ValueError(f"config: ln_eps must be a number > 0, got {eps!r}")
    cfg["ln_eps"] = float(eps)
    for key, default in (("ln_affine", True), ("uvqk_bias", True), ("proj_bias", False)):
        value = raw.get(key, default)
        if not isinstance(value, bool):
            raise ValueError(f"config: {key} must be true or false, got {value!r}")
        cfg[key] = value
    cfg["silu_uvqk"] = raw.get("silu_uvqk", "all")
    if cfg["silu_uvqk"] not in ("all", "u"):
        raise ValueError(f"config: silu_uvqk must be 'all' or 'u', got {cfg['silu_uvqk']!r}")
    cfg["rab"] = raw.get("rab", "none" if family == "ranking" else "pos_time")
    if cfg["rab"] not in ("none", "pos_time"):
        raise ValueError(f"config: rab must be 'none' or 'pos_time', got {cfg['rab']!r}")
    if family == "ranking" and cfg["rab"] != "none":
        raise ValueError("config: rab 'pos_time' needs timestamps; ranking takes 'none'")
    cfg["rab_buckets"] = _positive_int(raw, "rab_buckets") if "rab_buckets" in raw else 128
    for key in ("max_history", "max_candidates"):
        cfg[key] = _positive_int(raw, key, 0) if key in raw else None
    if family == "retrieval":
        limit = cfg["max_positions"]
        if cfg["max_history"] is None:
            cfg["max_history"] = limit
        if cfg["max_history"] > limit:
            raise ValueError("config: max_history exceeds max_positions (retrieval "
                             "gives every history item its own position)")
    return cfg


def uvqk_width(cfg):
    return 2 * cfg["n_heads"] * cfg["d_v"] + 2 * cfg["n_heads"] * cfg["d_qk"]


def expected_shapes(cfg):
    """Every tensor of the checkpoint, in file order, with its shape (spec section 3)."""
    d, hv = cfg["d_model"], cfg["n_heads"] * cfg["d_v"]
    shapes = {"emb.item": [cfg["tables"]["item"], d]}
    if cfg["family"] == "ranking":
        shapes["emb.action"] = [cfg["tables"]["action"], d]
    for j, rows in enumerate(cfg["tables"]["context"]):
        shapes[f"emb.context.{j}"] = [rows, d]
    shapes["pos"] = [cfg["max_positions"], d]
    for l in range(cfg["n_layers"]):
        p = f"layers.{l}."
        if cfg["ln_affine"]:
            shapes[p + "ln_in.weight"] = [d]
            shapes[p + "ln_in.bias"] = [d]
        shapes[p + "uvqk.weight"] = [d, uvqk_width(cfg)]
        if cfg["uvqk_bias"]:
            shapes[p + "uvqk.bias"] = [uvqk_width(cfg)]
        if cfg["ln_affine"]:
            shapes[p + "ln_out.weight"] = [hv]
            shapes[p + "ln_out.bias"] = [hv]
        shapes[p + "proj.weight"] = [hv, d]
        if cfg["proj_bias"]:
            shapes[p + "proj.bias"] = [d]
        if cfg["rab"] == "pos_time":
            shapes[p + "rab.pos"] = [2 * cfg["attn_scale_len"] - 1]
            shapes[p + "rab.time"] = [cfg["rab_buckets"] + 1]
    if cfg["family"] == "ranking":
        widths = [d] + cfg["head"]["hidden"] + [cfg["head"]["n_tasks"]]
        for j in range(len(widths) - 1):
            shapes[f"head.{j}.weight"] = [widths[j], widths[j + 1]]
            shapes[f"head.{j}.bias"] = [widths[j + 1]]
    return shapes


# ---------------------------------------------------------------- safetensors

DTYPE_BYTES = {"F32": 4, "BF16": 2, "F16": 2}


def encode_values(a, dtype):
    """float32 numpy array -> little-endian bytes in dtype (round to nearest even)."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    if dtype == "F32":
        return a.astype("<f4").tobytes()
    if dtype == "F16":
        return a.astype("<f2").tobytes()
    if dtype == "BF16":
        bits = a.view(np.uint32).astype(np.uint64)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        return rounded.astype("<u2").tobytes()
    raise ValueError(f"unknown dtype {dtype!r}")


def decode_values(f, dtype, count):
    """Read count values of dtype at f's position -> float32 numpy array (exact)."""
    if dtype == "F32":
        return np.fromfile(f, dtype="<f4", count=count).astype(np.float32, copy=False)
    if dtype == "F16":
        return np.fromfile(f, dtype="<f2", count=count).astype(np.float32)
    if dtype == "BF16":
        half = np.fromfile(f, dtype="<u2", count=count).astype(np.uint32)
        return (half << 16).view(np.float32)
    raise ValueError(f"unsupported dtype {dtype!r}")


def write_safetensors(path, tensors, dtype):
    """tensors: {name: array-like of float}; every tensor is stored in dtype."""
    header, blobs, offset = {}, [], 0
    for name, value in tensors.items():
        a = np.asarray(value.detach().cpu().numpy() if torch.is_tensor(value) else value,
                       dtype=np.float32)
        blob = encode_values(a, dtype)
        header[name] = {"dtype": dtype, "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # data section starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def read_safetensors(path):
    """-> {name: float32 numpy array}; raises ValueError naming what is wrong.
    Reads tensor by tensor, so memory holds one copy of the weights."""
    with open(path, "rb") as f:
        file_size = os.fstat(f.fileno()).st_size
        if file_size < 8:
            raise ValueError(f"{path}: shorter than the 8-byte header length")
        (hlen,) = struct.unpack("<Q", f.read(8))
        if hlen > file_size - 8:
            raise ValueError(f"{path}: header length {hlen} runs past the end of the file")
        try:
            header = json.loads(f.read(hlen))
        except ValueError as e:
            raise ValueError(f"{path}: header is not JSON ({e})")
        if not isinstance(header, dict):
            raise ValueError(f"{path}: header is not a JSON object")
        base, size = 8 + hlen, file_size - 8 - hlen
        out, spans = {}, []
        for name, info in header.items():
            if name == "__metadata__":
                continue
            try:
                dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
                count = int(np.prod(shape)) if shape else 1
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{path}: tensor {name} has a malformed header entry")
            if dtype not in DTYPE_BYTES:
                raise ValueError(f"{path}: tensor {name} has dtype {dtype}, "
                                 "expected F32, BF16 or F16")
            if not (0 <= begin <= end <= size) or end - begin != count * DTYPE_BYTES[dtype]:
                raise ValueError(f"{path}: tensor {name} has data offsets [{begin},{end}] "
                                 f"that do not fit its shape {shape} or the file")
            spans.append((begin, end, name))
            f.seek(base + begin)
            out[name] = decode_values(f, dtype, count).reshape(shape)
    spans.sort()
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise ValueError(f"{path}: tensors {n0} and {n1} overlap")
    return out


# ---------------------------------------------------------------- checkpoints

def load_model(model_dir, dtype=torch.float32):
    """Read DIR/config.json and DIR/model.safetensors.
    Returns {"config": cfg, "w": {name: tensor of dtype}}."""
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = parse_config(json.load(f))
    arrays = read_safetensors(os.path.join(model_dir, "model.safetensors"))
    shapes = expected_shapes(cfg)
    for name, shape in shapes.items():
        if name not in arrays:
            raise ValueError(f"model.safetensors: tensor {name} is missing")
        if list(arrays[name].shape) != shape:
            raise ValueError(f"model.safetensors: tensor {name} has shape "
                             f"{list(arrays[name].shape)}, expected {shape}")
    for name in arrays:
        if name not in shapes:
            raise ValueError(f"model.safetensors: unexpected tensor {name}")
    w = {name: torch.from_numpy(a).to(dtype) for name, a in arrays.items()}
    return {"config": cfg, "w": w}


def model_to(model, dtype):
    """The same model with its tensors in another dtype."""
    return {"config": model["config"], "w": {k: v.to(dtype) for k, v in model["w"].items()}}


def random_model(config, seed=0):
    """Random float32 weights for config, scaled so that activations stay O(1).
    Returns {name: tensor} in file order."""
    cfg = parse_config(config)
    g = torch.Generator().manual_seed(seed)
    d = cfg["d_model"]

    def uniform(shape, lo, hi):
        return torch.rand(shape, generator=g, dtype=torch.float32) * (hi - lo) + lo

    tensors = {}
    for name, shape in expected_shapes(cfg).items():
        if name.startswith("emb."):
            t = uniform(shape, -0.5, 0.5) / math.sqrt(d)  # x = e * sqrt(d) is U(-.5,.5)
        elif name == "pos":
            t = uniform(shape, -0.25, 0.25)
        elif name.endswith("ln_in.weight") or name.endswith("ln_out.weight"):
            t = uniform(shape, 0.8, 1.2)
        elif name == "head.0.weight":
            # its input is L2-normalised, so U(-sqrt 3, sqrt 3) gives outputs of variance 1
            t = uniform(shape, -1.0, 1.0) * math.sqrt(3.0)
        elif name.startswith("head.") and name.endswith(".weight"):
            # after a ReLU: He-style scale keeps the logits O(1)
            t = uniform(shape, -1.0, 1.0) * math.sqrt(6.0 / shape[0])
        elif name.endswith(".weight"):
            t = uniform(shape, -1.0, 1.0) / math.sqrt(shape[0])
        elif name.endswith("rab.pos") or name.endswith("rab.time"):
            t = uniform(shape, -0.5, 0.5)
        elif name.startswith("head."):
            t = uniform(shape, -0.05, 0.05)
        else:  # LayerNorm and linear biases
            t = uniform(shape, -0.1, 0.1)
        tensors[name] = t
    return tensors


def write_checkpoint(model_dir, config, tensors, dtype="F32"):
    """Write DIR/config.json (as given) and DIR/model.safetensors (all in dtype)."""
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
        f.write("\n")
    write_safetensors(os.path.join(model_dir, "model.safetensors"), tensors, dtype)


# ---------------------------------------------------------------- the layer

def layer_norm(x, w, b, eps):
    """LayerNorm over the last axis, biased variance; w, b may be None."""
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    y = (x - mean) / torch.sqrt(var + eps)
    if w is not None:
        y = y * w + b
    return y


def l2_normalise(x):
    return x / torch.clamp(torch.linalg.norm(x, dim=-1, keepdim=True), min=1e-6)


def hstu_layer(model, l, x, mask, rab):
    """One HSTU layer (spec 1.3) on one user's rows.
    x [T, d]; mask [T, T] of 0/1 (row i may see column j); rab [T, T] or None."""
    cfg, w = model["config"], model["w"]
    p = f"layers.{l}."
    H, Dqk, Dv, T = cfg["n_heads"], cfg["d_qk"], cfg["d_v"], x.shape[0]
    xn = layer_norm(x, w.get(p + "ln_in.weight"), w.get(p + "ln_in.bias"), cfg["ln_eps"])
    z = xn @ w[p + "uvqk.weight"]
    if cfg["uvqk_bias"]:
        z = z + w[p + "uvqk.bias"]
    u, v, q, k = torch.split(z, [H * Dv, H * Dv, H * Dqk, H * Dqk], dim=-1)
    u = F.silu(u)
    if cfg["silu_uvqk"] == "all":
        v, q, k = F.silu(v), F.silu(q), F.silu(k)
    q = q.reshape(T, H, Dqk).transpose(0, 1)           # [H, T, Dqk]
    k = k.reshape(T, H, Dqk).transpose(0, 1)
    v = v.reshape(T, H, Dv).transpose(0, 1)            # [H, T, Dv]
    s = cfg["alpha"] * (q @ k.transpose(1, 2))         # [H, T, T]
    if rab is not None:
        s = s + rab
    s = F.silu(s) / cfg["attn_scale_len"] * mask
    a = (s @ v).transpose(0, 1).reshape(T, H * Dv)     # heads side by side
    y = u * layer_norm(a, w.get(p + "ln_out.weight"), w.get(p + "ln_out.bias"), cfg["ln_eps"])
    x = x + y @ w[p + "proj.weight"]
    if cfg["proj_bias"]:
        x = x + w[p + "proj.bias"]
    return x


# ---------------------------------------------------------------- ranking

def _check_ids(name, ids, rows):
    for i in ids:
        if not (0 <= i < rows):
            raise ValueError(f"{name}: id {i} out of range [0, {rows})")


def forward_ranking(model, context_ids, items, actions, candidates):
    """Full recompute for one user (spec 1.1). Returns logits [m, T]."""
    cfg, w = model["config"], model["w"]
    d, k, n, m = cfg["d_model"], len(context_ids), len(items), len(candidates)
    if k != len(cfg["tables"]["context"]):
        raise ValueError(f"context: expected {len(cfg['tables']['context'])} ids, got {k}")
    if len(actions) != n:
        raise ValueError(f"actions: expected {n} ids (one per item), got {len(actions)}")
    for j, c in enumerate(context_ids):
        _check_ids(f"context[{j}]", [c], cfg["tables"]["context"][j])
    _check_ids("items", items, cfg["tables"]["item"])
    _check_ids("actions", actions, cfg["tables"]["action"])
    _check_ids("candidates", candidates, cfg["tables"]["item"])
    dtype = w["pos"].dtype
    h = k + 2 * n
    T = h + m
    rows = [w[f"emb.context.{j}"][c] for j, c in enumerate(context_ids)]
    for i, a in zip(items, actions):
        rows.append(w["emb.item"][i])
        rows.append(w["emb.action"][a])
    rows += [w["emb.item"][c] for c in candidates]
    if T == 0:
        return torch.zeros(0, cfg["head"]["n_tasks"], dtype=dtype)
    e = torch.stack(rows)
    positions = [min(p, h, cfg["max_positions"] - 1) for p in range(T)]
    x = e * math.sqrt(d) + w["pos"][positions]
    r = torch.arange(T)[:, None]
    c = torch.arange(T)[None, :]
    mask = torch.where(r < h, c <= r, (c < h) | (c == r)).to(dtype)
    for l in range(cfg["n_layers"]):
        x = hstu_layer(model, l, x, mask, None)
    return ranking_head(model, x[h:])


def ranking_head(model, x):
    """L2-normalise the candidate rows, then the MLP: [m, d] -> logits [m, T]."""
    n_linear = len(model["config"]["head"]["hidden"]) + 1
    x = l2_normalise(x)
    for j in range(n_linear):
        x = x @ model["w"][f"head.{j}.weight"] + model["w"][f"head.{j}.bias"]
        if j < n_linear - 1:
            x = torch.relu(x)
    return x


def forward_ranking_fast(model, requests, block=256):
    """Batched ranking forward for speed (float32 or whatever the model holds).
    requests: list of (context_ids, items, actions, candidates), ids already
    validated.  Returns a list of logits [m_b, T].

    Users are padded to the longest history Hx and the largest candidate
    count M (rows [0, Hx) history, [Hx, Hx+M) candidates); the projections run
    on the whole padded batch.  Attention runs per user and head as plain
    matrix products on strided views of the u|v|q|k activations (no copies):
    history rows in blocks that touch only the columns a causal row can see,
    into one reused score buffer; candidates against the history in one
    product plus their own diagonal term.  alpha goes into the GEMM and 1/N
    onto a, so scores are SiLU'd and masked in place."""
    cfg, w = model["config"], model["w"]
    d, H, Dqk, Dv = cfg["d_model"], cfg["n_heads"], cfg["d_qk"], cfg["d_v"]
    alpha = cfg["alpha"]
    B = len(requests)
    hs = [len(c) + 2 * len(i) for c, i, _, _ in requests]
    ms = [len(t) for _, _, _, t in requests]
    Hx, M = max(hs), max(ms)
    T = Hx + M
    dtype = w["pos"].dtype
    # padding rows hold row 0 of the item table; no valid row ever sees them
    x = torch.zeros(B, T, d, dtype=dtype)
    pos_idx = torch.zeros(B, T, dtype=torch.long)
    for b, (ctx, items, actions, cands) in enumerate(requests):
        k, n, h, m = len(ctx), len(items), hs[b], ms[b]
        for j, c in enumerate(ctx):
            x[b, j] = w[f"emb.context.{j}"][c]
        if n:
            x[b, k:h:2] = w["emb.item"][torch.tensor(items)]
            x[b, k + 1:h:2] = w["emb.action"][torch.tensor(actions)]
        if m:
            x[b, Hx:Hx + m] = w["emb.item"][torch.tensor(cands)]
        pos_idx[b, :h] = torch.clamp(torch.arange(h), max=cfg["max_positions"] - 1)
        pos_idx[b, Hx:] = min(h, cfg["max_positions"] - 1)
    x = x * math.sqrt(d) + w["pos"][pos_idx]
    block = max(1, min(block, Hx))
    scores = torch.empty(max(block, M) * max(Hx, 1), dtype=dtype)  # reused score buffer
    qo, ko = 2 * H * Dv, 2 * H * Dv + H * Dqk                 # column offsets in u|v|q|k
    for l in range(cfg["n_layers"]):
        p = f"layers.{l}."
        xn = F.layer_norm(x, (d,), w.get(p + "ln_in.weight"), w.get(p + "ln_in.bias"),
                          cfg["ln_eps"])
        z = xn @ w[p + "uvqk.weight"]                         # [B, T, 2HDv + 2HDqk]
        if cfg["uvqk_bias"]:
            z += w[p + "uvqk.bias"]
        if cfg["silu_uvqk"] == "all":
            F.silu(z, inplace=True)
        else:
            F.silu(z[:, :, :H * Dv], inplace=True)
        a = torch.zeros(B, T, H * Dv, dtype=dtype)   # padding rows stay 0
        for b in range(B):
            hb = hs[b]
            for hd in range(H):
                q = z[b, :, qo + hd * Dqk:qo + (hd + 1) * Dqk]  # [T, Dqk] views
                kk = z[b, :, ko + hd * Dqk:ko + (hd + 1) * Dqk]
                v = z[b, :, H * Dv + hd * Dv:H * Dv + (hd + 1) * Dv]
                out = a[b, :, hd * Dv:(hd + 1) * Dv]
                for r0 in range(0, hb, block):
                    r1 = min(r0 + block, hb)
                    s = scores[:(r1 - r0) * r1].view(r1 - r0, r1)
                    torch.addmm(s, q[r0:r1], kk[:r1].t(), beta=0, alpha=alpha, out=s)
                    F.silu(s, inplace=True)
                    s[:, r0:r1].tril_()              # causal inside the block
                    torch.mm(s, v[:r1], out=out[r0:r1])
                if ms[b]:
                    c0, c1 = Hx, Hx + ms[b]
                    s = scores[:ms[b] * hb].view(ms[b], hb)
                    torch.addmm(s, q[c0:c1], kk[:hb].t(), beta=0, alpha=alpha, out=s)
                    F.silu(s, inplace=True)
                    self_s = F.silu(alpha * (q[c0:c1] * kk[c0:c1]).sum(-1, keepdim=True))
                    torch.addcmul(torch.mm(s, v[:hb]), self_s, v[c0:c1], out=out[c0:c1])
        a.mul_(1.0 / cfg["attn_scale_len"])
        y = z[:, :, :H * Dv] * F.layer_norm(a, (H * Dv,), w.get(p + "ln_out.weight"),
                                            w.get(p + "ln_out.bias"), cfg["ln_eps"])
        x = torch.addmm(x.reshape(B * T, d), y.reshape(B * T, H * Dv),
                        w[p + "proj.weight"]).reshape(B, T, d)
        if cfg["proj_bias"]:
            x += w[p + "proj.bias"]
    out = ranking_head(model, x[:, Hx:])
    return [out[b, :ms[b]] for b in range(B)]


# ---------------------------------------------------------------- retrieval

def time_bucket(dt, num_buckets):
    """bucket(t) = clamp(floor(ln(max(|t|, 1)) / 0.301), 0, num_buckets), in float64."""
    t = np.maximum(np.abs(np.asarray(dt, dtype=np.float64)), 1.0)
    return np.clip(np.floor(np.log(t) / 0.301), 0, num_buckets).astype(np.int64)


def relative_bias(model, l, timestamps, query_time):
    """rab [n, n] of layer l (spec 1.4); the causal mask zeroes j > i later."""
    cfg, w = model["config"], model["w"]
    N, n = cfg["attn_scale_len"], len(timestamps)
    ts = np.asarray(timestamps, dtype=np.int64)
    ts_next = np.append(ts[1:], np.int64(query_time))
    i = np.arange(n)[:, None]
    j = np.arange(n)[None, :]
    rel = np.clip(j - i, -(N - 1), N - 1) + N - 1
    bucket = time_bucket(ts_next[:, None] - ts[None, :], cfg["rab_buckets"])
    return (w[f"layers.{l}.rab.pos"][torch.from_numpy(rel)]
            + w[f"layers.{l}.rab.time"][torch.from_numpy(bucket)])


def retrieval_scores(model, items, timestamps, query_time):
    """Cosine score of every item id for one user (spec 1.2): tensor [items]."""
    cfg, w = model["config"], model["w"]
    n, d = len(items), cfg["d_model"]
    if n < 1:
        raise ValueError("items: retrieval needs at least one history item")
    if len(timestamps) != n:
        raise ValueError(f"timestamps: expected {n} values (one per item), got {len(timestamps)}")
    if n > cfg["max_positions"]:
        raise ValueError(f"items: {n} history items exceed max_positions {cfg['max_positions']}")
    _check_ids("items", items, cfg["tables"]["item"])
    dtype = w["pos"].dtype
    x = w["emb.item"][items] * math.sqrt(d) + w["pos"][:n]
    mask = torch.tril(torch.ones(n, n, dtype=dtype))
    for l in range(cfg["n_layers"]):
        rab = relative_bias(model, l, timestamps, query_time) if cfg["rab"] == "pos_time" else None
        x = hstu_layer(model, l, x, mask, rab)
    user = l2_normalise(x[-1])
    return l2_normalise(w["emb.item"]) @ user


def top_k_ids(scores, top_k, exclude):
    """Top-k item ids of a score vector: never id 0 nor an id in exclude,
    ties toward the smaller id.  Returns (ids, scores) as Python lists."""
    s = np.asarray(scores.detach().cpu().numpy(), dtype=np.float64)
    eligible = np.ones(len(s), dtype=bool)
    eligible[0] = False
    eligible[np.array([i for i in exclude if 0 <= i < len(s)], dtype=np.int64)] = False
    ids = np.nonzero(eligible)[0]
    order = np.lexsort((ids, -s[ids]))[:top_k]
    return [int(i) for i in ids[order]], [float(v) for v in s[ids[order]]]


def forward_retrieval(model, items, timestamps, query_time, top_k, exclude_history=True):
    """Full recompute for one user (spec 1.2, 1.4). Returns (ids, scores)."""
    if top_k < 1:
        raise ValueError(f"top_k: must be >= 1, got {top_k}")
    scores = retrieval_scores(model, items, timestamps, query_time)
    return top_k_ids(scores, top_k, set(items) if exclude_history else set())


# ---------------------------------------------------------------- requests

def _int_list(req, key, required=True):
    if key not in req:
        if required:
            raise ValueError(f"{key}: missing")
        return []
    value = req[key]
    if not isinstance(value, list) or not all(_is_int(x) for x in value):
        raise ValueError(f"{key}: expected a list of integers")
    return value


def parse_request(cfg, line):
    """One JSON line of `hstu infer` -> a validated dict; raises ValueError."""
    try:
        req = json.loads(line)
    except ValueError as e:
        raise ValueError(f"invalid JSON: {e}")
    if not isinstance(req, dict):
        raise ValueError("request: expected a JSON object")
    user = req.get("user_id")
    if not _is_int(user):
        raise ValueError("user_id: expected an integer")
    out = {"user_id": user, "items": _int_list(req, "items")}
    n = len(out["items"])
    if cfg["max_history"] is not None and n > cfg["max_history"]:
        raise ValueError(f"items: {n} history items exceed max_history {cfg['max_history']}")
    if cfg["family"] == "ranking":
        for key in req:
            if key not in ("user_id", "context", "items", "actions", "candidates"):
                raise ValueError(f"{key}: unknown field for a ranking request")
        out["context"] = _int_list(req, "context", required=False)
        out["actions"] = _int_list(req, "actions")
        out["candidates"] = _int_list(req, "candidates")
        m = len(out["candidates"])
        if cfg["max_candidates"] is not None and m > cfg["max_candidates"]:
            raise ValueError(f"candidates: {m} exceed max_candidates {cfg['max_candidates']}")
    else:
        for key in req:
            if key not in ("user_id", "items", "timestamps", "query_time", "top_k",
                           "exclude_history"):
                raise ValueError(f"{key}: unknown field for a retrieval request")
        out["timestamps"] = _int_list(req, "timestamps")
        for key in ("query_time", "top_k"):
            if not _is_int(req.get(key)):
                raise ValueError(f"{key}: expected an integer")
            out[key] = req[key]
        exclude = req.get("exclude_history", True)
        if not isinstance(exclude, bool):
            raise ValueError("exclude_history: expected true or false")
        out["exclude_history"] = exclude
    return out


def answer_request(model, req, logits=False):
    """A parsed request -> the answer object `hstu infer` prints."""
    if model["config"]["family"] == "ranking":
        out = forward_ranking(model, req["context"], req["items"], req["actions"],
                              req["candidates"])
        if not logits:
            out = torch.sigmoid(out)
        return {"user_id": req["user_id"], "scores": out.tolist()}
    ids, scores = forward_retrieval(model, req["items"], req["timestamps"], req["query_time"],
                                    req["top_k"], req["exclude_history"])
    return {"user_id": req["user_id"], "items": ids, "scores": scores}


def cmd_infer(args):
    model = load_model(args.model, torch.float64 if args.fp64 else torch.float32)
    with open(args.requests) as f:
        lines = f.read().splitlines()
    with torch.inference_mode():
        for line in lines:
            if not line.strip():
                continue
            try:
                req = parse_request(model["config"], line)
                answer = answer_request(model, req, args.logits)
            except ValueError as e:
                answer = {"error": str(e)}
            print(json.dumps(answer), flush=False)
    return 0


def cmd_random(args):
    with open(args.config) as f:
        config = json.load(f)
    write_checkpoint(args.out, config, random_model(config, args.seed), args.dtype)
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("infer", help="answer hstu infer requests with the torch model")
    a.add_argument("--model", required=True)
    a.add_argument("--requests", required=True)
    a.add_argument("--logits", action="store_true", help="print logits, not probabilities")
    a.add_argument("--fp64", action="store_true", help="compute in float64 (default float32)")
    a.add_argument("--backend", default="ref", help="ignored (accepted for hstu's command line)")
    a.add_argument("--no-cache", action="store_true", help="ignored")
    a.add_argument("--page-size", type=int, help="ignored")
    a.add_argument("--batch", type=int, help="ignored")
    a.set_defaults(func=cmd_infer)
    r = sub.add_parser("random", help="write a model with random weights")
    r.add_argument("--config", required=True, help="a config.json")
    r.add_argument("--out", required=True, help="model directory to write")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--dtype", default="F32", choices=sorted(DTYPE_BYTES))
    r.set_defaults(func=cmd_random)
    args = ap.parse_args(argv)
    try:
        return args.func(args)
    except (OSError, ValueError) as e:
        print(f"hstu_torch: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
