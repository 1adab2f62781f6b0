#!/usr/bin/env python3
"""PyTorch + transformers baseline for pdserve's GPU benchmark (scripts/bench-gpu.sh).

Loads a Hugging Face model directory (the Qwen3-0.6B-shape model with random
weights that `make_model` writes) with AutoModelForCausalLM in bfloat16 on CUDA,
and times greedy `generate` on random prompt token ids (fixed seed, ids below
the first special token), with `min_new_tokens = max_new_tokens` so every run
generates the full length whatever the end-of-sequence tokens.

Each run NAME:BATCH:PROMPT:GEN is measured twice per repeat:

* prefill: `generate(max_new_tokens=1)` — the prompt's forward pass plus the
  first token, synchronised end to end (`prefill_s`);
* full: `generate(max_new_tokens=GEN)`; `decode_s = full - prefill`, the time of
  the GEN-1 single-token steps after the first token.

Reported as pdserve's `bench-engine --json` does: `prefill_tok_s` =
BATCH*PROMPT / prefill_s, `decode_tok_s` = BATCH*(GEN-1) / decode_s,
`ms_per_step` = decode_s / (GEN-1) in ms. Best (lowest time) of --repeats after
warm-up runs; the median is kept too.

Modes:

* eager: the default dynamic cache, no compilation;
* compiled: a static KV cache (`cache_implementation="static"`) and
  torch.compile. transformers that have `GenerationConfig.compile_config`
  compile the decoding step themselves when the cache is static (recipe
  `auto`); older ones get the documented recipe `model.forward =
  torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)`
  (recipe `manual`, forced with --compile-recipe manual). Two untimed warm-ups
  per shape (compilation, then CUDA graph capture).

Output: one JSON line per measurement on stdout (engine "torch", mode, name,
batch, prompt_len, gen_len, prefill_s, decode_s, prefill_tok_s, decode_tok_s,
ms_per_step, ...), a first "meta" line with versions and the GPU, and an
"error" line for a run that fails (out of memory, compile error) — the other
runs go on. Progress goes to stderr.

Exit status: 0 when every run succeeded, 1 when one failed, 2 when the
measurement cannot run here at all (torch or transformers not importable, no
CUDA device): a clear message on stderr and a "skipped" JSON line on stdout.

Usage:
  python3 scripts/bench_gpu_torch.py --model DIR [--modes eager,compiled]
      [--runs decode:1:128:128,prefill:1:4096:1,batch_mid:64:512:128]
      [--compile-runs decode,batch_mid] [--repeats 3] [--seed 0]
      [--device cuda] [--attn sdpa]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

DEFAULT_RUNS = "decode:1:128:128,prefill:1:4096:1,batch_mid:64:512:128,batch_max:256:512:128"
DEFAULT_COMPILE_RUNS = "decode,batch_mid"


def log(msg: str) -> None:
    print(f"bench_gpu_torch: {msg}", file=sys.stderr, flush=True)


def emit(obj: dict) -> None:
    print(json.dumps(obj, sort_keys=True), flush=True)


def skip(reason: str) -> None:
    log(f"skipped: {reason}")
    emit({"engine": "torch", "skipped": reason})
    sys.exit(2)


def parse_runs(text: str) -> list[tuple[str, int, int, int]]:
    runs = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        parts = item.split(":")
        if len(parts) != 4:
            raise SystemExit(f"bench_gpu_torch: bad run {item!r} (want NAME:BATCH:PROMPT:GEN)")
        name, b, p, g = parts[0], int(parts[1]), int(parts[2]), int(parts[3])
        if min(b, p, g) < 1:
            raise SystemExit(f"bench_gpu_torch: run {item!r} has a zero size")
        runs.append((name, b, p, g))
    return runs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="HF model directory")
    ap.add_argument("--modes", default="eager,compiled", help="eager, compiled or both")
    ap.add_argument("--runs", default=DEFAULT_RUNS, help="NAME:BATCH:PROMPT:GEN,...")
    ap.add_argument(
        "--compile-runs",
        default=DEFAULT_COMPILE_RUNS,
        help="names of the runs also measured compiled ('all' for every run)",
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (dry runs)")
    ap.add_argument("--attn", default="sdpa", help="attn_implementation for from_pretrained")
    ap.add_argument("--compile-recipe", choices=["auto", "manual"], default=None)
    args = ap.parse_args()

    runs = parse_runs(args.runs)
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in ("eager", "compiled"):
            raise SystemExit(f"bench_gpu_torch: unknown mode {m!r}")
    # Eager first: the manual compile recipe replaces model.forward for good.
    modes = sorted(set(modes), key=["eager", "compiled"].index)
    compile_names = (
        {r[0] for r in runs}
        if args.compile_runs == "all"
        else {n for n in args.compile_runs.split(",") if n}
    )
    if not os.path.isfile(os.path.join(args.model, "config.json")):
        raise SystemExit(f"bench_gpu_torch: {args.model} has no config.json")

    try:
        import torch
    except Exception as e:  # ImportError, or a broken install
        skip(f"torch is not importable ({type(e).__name__}: {e})")
    try:
        import transformers
        from transformers import AutoModelForCausalLM, GenerationConfig
    except Exception as e:
        skip(f"transformers is not importable ({type(e).__name__}: {e})")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        skip(f"no CUDA device (torch {torch.__version__}, torch.version.cuda={torch.version.cuda})")
    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    transformers.logging.set_verbosity_error()

    def sync() -> None:
        if on_cuda:
            torch.cuda.synchronize(device)

    # `dtype` replaced `torch_dtype` in transformers 4.56; an unknown keyword would
    # be taken as a config override and silently load float32, hence the check.
    tv = tuple(int(x) for x in transformers.__version__.split(".")[:2] if x.isdigit())
    dtype_kw = "dtype" if tv >= (4, 56) else "torch_dtype"
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(
        args.model, **{dtype_kw: torch.bfloat16}, attn_implementation=args.attn
    )
    if model.dtype != torch.bfloat16:
        model = model.to(torch.bfloat16)
    model = model.to(device).eval()
    sync()
    load_s = time.perf_counter() - t0
    cfg = model.config
    # Ordinary tokens only: every id below the first special one (<|endoftext|>,
    # also bos and pad); the config may not carry it (then the model's, or Qwen3's).
    bos = getattr(cfg, "bos_token_id", None)
    if bos is None:
        bos = getattr(model.generation_config, "bos_token_id", None) or 151643
    id_limit = min(cfg.vocab_size, bos)
    auto_compile = hasattr(GenerationConfig(), "compile_config")
    recipe = args.compile_recipe or ("auto" if auto_compile else "manual")
    emit(
        {
            "engine": "torch",
            "meta": True,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "cuda": torch.version.cuda,
            "device": torch.cuda.get_device_name(device) if on_cuda else "cpu",
            "attn": args.attn,
            "compile_recipe": recipe,
            "model": os.path.basename(os.path.normpath(args.model)),
            "layers": cfg.num_hidden_layers,
            "hidden": cfg.hidden_size,
            "vocab": cfg.vocab_size,
            "load_s": round(load_s, 3),
        }
    )
    log(
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"{'GPU ' + torch.cuda.get_device_name(device) if on_cuda else 'CPU'}; "
        f"model loaded in {load_s:.1f} s"
    )

    gen = torch.Generator().manual_seed(args.seed)

    def prompt(batch: int, length: int):
        ids = torch.randint(0, id_limit, (batch, length), generator=gen)
        return ids.to(device), torch.ones_like(ids, device=device)

    def timed_generate(ids, mask, new_tokens: int, static: bool) -> float:
        kw = dict(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=bos,
        )
        if static:
            kw["cache_implementation"] = "static"
        sync()
        t = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**kw)
        sync()
        elapsed = time.perf_counter() - t
        got = out.shape[1] - ids.shape[1]
        if got != new_tokens:
            raise RuntimeError(f"generate produced {got} tokens, not {new_tokens}")
        return elapsed

    def measure(mode: str, name: str, batch: int, p: int, g: int) -> dict:
        static = mode == "compiled"
        ids, mask = prompt(batch, p)
        if on_cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        # Warm-up: the full length first, so that the static cache is sized for
        # it and the max_new_tokens=1 calls reuse it (no re-allocation, no
        # recompilation); compiled mode needs a second pass for graph capture.
        warm = 2 if static else 1
        for _ in range(warm):
            timed_generate(ids, mask, g, static)
            if g > 1:
                timed_generate(ids, mask, 1, static)
        pre, full = [], []
        for _ in range(args.repeats):
            pre.append(timed_generate(ids, mask, 1, static))
            if g > 1:
                full.append(timed_generate(ids, mask, g, static))
        prefill_s = min(pre)
        res = {
            "engine": "torch",
            "mode": mode,
            "name": name,
            "batch": batch,
            "prompt_len": p,
            "gen_len": g,
            "repeats": args.repeats,
            "prefill_s": round(prefill_s, 5),
            "prefill_s_median": round(statistics.median(pre), 5),
            "prefill_tok_s": round(batch * p / prefill_s, 2),
        }
        if g > 1:
            decode = [max(f - prefill_s, 1e-9) for f in full]
            decode_s = min(decode)
            res.update(
                {
                    "decode_s": round(decode_s, 5),
                    "decode_s_median": round(statistics.median(decode), 5),
                    "decode_tok_s": round(batch * (g - 1) / decode_s, 2),
                    "ms_per_step": round(decode_s * 1e3 / (g - 1), 3),
                    "decode_steps": g - 1,
                }
            )
        else:
            res.update({"decode_s": 0.0, "decode_tok_s": 0.0, "ms_per_step": 0.0, "decode_steps": 0})
        if on_cuda:
            res["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        return res

    failures = 0
    for mode in modes:
        todo = [r for r in runs if mode == "eager" or r[0] in compile_names]
        if mode == "compiled" and todo and recipe == "manual":
            model.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)
        for name, b, p, g in todo:
            log(f"{mode} {name}: batch {b}, prompt {p}, gen {g}")
            t = time.perf_counter()
            try:
                res = measure(mode, name, b, p, g)
            except Exception as e:  # OOM, compile failure: report, go on
                failures += 1
                msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                log(f"{mode} {name} failed: {msg}")
                emit({"engine": "torch", "mode": mode, "name": name, "batch": b,
                      "prompt_len": p, "gen_len": g, "error": msg[:500]})
                continue
            res["wall_s"] = round(time.perf_counter() - t, 2)
            emit(res)
            log(
                f"{mode} {name}: prefill {res['prefill_s'] * 1e3:.1f} ms, "
                f"decode {res['ms_per_step']:.2f} ms/step, {res['decode_tok_s']:.0f} tok/s "
                f"({res['wall_s']:.0f} s with warm-up)"
            )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
