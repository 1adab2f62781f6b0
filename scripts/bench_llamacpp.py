#!/usr/bin/env python3
"""llama.cpp baseline numbers for pdserve (run through scripts/bench-llamacpp.sh).

Measures, on one GGUF with a fixed thread count, through llama-cpp-python's
low-level token API (no sampling chains, no chat template):

* decode: batch-1 greedy generation of N tokens (default 128) after a short
  prompt, ignoring end-of-sequence. The first generated token comes from the
  prompt's logits; the reported rate is (N-1) / time of the N-1 single-token
  evaluations that follow ("time per token after the first"). Argmax is
  included in the per-token time.
* prefill: evaluation of an exact 512-token prompt into an empty KV cache
  (n_ctx >= 1024, n_batch = 512, so one forward pass), timed end to end.

Each measurement runs --repeats times after one untimed warm-up; best and
median are reported. Human-readable lines go to stderr, one JSON line to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

DEFAULT_MODEL = os.path.join(
    os.environ.get("PDSERVE_MODELS_DIR")
    or os.path.join(
        os.environ.get("PDSERVE_CACHE") or os.path.expanduser("~/.cache/pdserve"),
        "models",
    ),
    "SmolLM2-135M-Instruct.Q4_1.gguf",
)

# Deterministic filler text used to build prompts of an exact token length.
FILLER = (
    "The quick brown fox jumps over the lazy dog while the scheduler splits "
    "prefill from decode, moving key and value blocks between workers. "
    "Numbers like 1234, 56.78 and 9e10 mix with words, punctuation; and code: "
    "fn main() { println!(\"hello\"); } "
)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=DEFAULT_MODEL, help="GGUF file (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="n_threads and n_threads_batch")
    p.add_argument("--decode-tokens", type=int, default=128, help="tokens generated per decode run")
    p.add_argument("--prefill-tokens", type=int, default=512, help="exact prompt length for prefill")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per measurement")
    p.add_argument("--n-ctx", type=int, default=1024, help="context size (>= prefill + decode)")
    return p.parse_args()


def clear_kv(llm) -> None:
    """Empty the KV cache and llama-cpp-python's token bookkeeping."""
    llm.reset()  # n_tokens = 0; eval() then drops cached positions >= 0 too
    clear = getattr(llm._ctx, "kv_cache_clear", None)  # internal; name varies by version
    if clear is not None:
        clear()


def last_logits(llm, np):
    """Logits of the last evaluated token (llm.scores is not filled without logits_all)."""
    import llama_cpp

    ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))


def exact_tokens(llm, n: int) -> list[int]:
    """A deterministic list of exactly n token ids (BOS first when the model has one)."""
    text = FILLER
    toks = llm.tokenize(text.encode(), add_bos=True, special=False)
    while len(toks) < n:
        text += FILLER
        toks = llm.tokenize(text.encode(), add_bos=True, special=False)
    return toks[:n]


def time_prefill(llm, tokens: list[int]) -> float:
    clear_kv(llm)
    t0 = time.perf_counter()
    llm.eval(tokens)
    return time.perf_counter() - t0


def time_decode(llm, np, prompt: list[int], n_gen: int) -> tuple[float, list[int]]:
    """Greedy batch-1 decode; returns (seconds for tokens 2..n_gen, generated ids)."""
    clear_kv(llm)
    llm.eval(prompt)
    tok = int(np.argmax(last_logits(llm, np)))
    out = [tok]
    t0 = time.perf_counter()
    for _ in range(n_gen - 1):
        llm.eval([tok])
        tok = int(np.argmax(last_logits(llm, np)))
        out.append(tok)
    return time.perf_counter() - t0, out


def main() -> int:
    args = parse_args()
    if not os.path.isfile(args.model):
        log(f"bench_llamacpp: model not found: {args.model} (run scripts/fetch-assets.sh)")
        return 1
    if args.n_ctx < args.prefill_tokens or args.n_ctx < 64 + args.decode_tokens:
        log("bench_llamacpp: --n-ctx too small for the requested prompt/decode lengths")
        return 2
    if args.decode_tokens < 2 or args.repeats < 1:
        log("bench_llamacpp: need --decode-tokens >= 2 and --repeats >= 1")
        return 2

    import llama_cpp
    import numpy as np

    llm = llama_cpp.Llama(
        model_path=args.model,
        n_ctx=args.n_ctx,
        n_batch=max(512, args.prefill_tokens),
        n_ubatch=max(512, args.prefill_tokens),
        n_threads=args.threads,
        n_threads_batch=args.threads,
        logits_all=False,
        verbose=False,
    )
    log(
        f"llama.cpp via llama-cpp-python {llama_cpp.__version__}, "
        f"model {os.path.basename(args.model)}, threads {args.threads}, n_ctx {args.n_ctx}"
    )

    prefill = exact_tokens(llm, args.prefill_tokens)
    assert len(prefill) == args.prefill_tokens
    prompt = exact_tokens(llm, 16)

    # Warm-up (page in the mmapped weights, size the buffers).
    time_prefill(llm, prefill)
    time_decode(llm, np, prompt, 8)

    pre_rates = []
    for i in range(args.repeats):
        dt = time_prefill(llm, prefill)
        pre_rates.append(args.prefill_tokens / dt)
        log(f"  prefill {args.prefill_tokens} run {i + 1}: {dt * 1e3:8.1f} ms  {pre_rates[-1]:8.1f} tok/s")

    dec_rates = []
    first_out = None
    for i in range(args.repeats):
        dt, out = time_decode(llm, np, prompt, args.decode_tokens)
        first_out = first_out or out
        dec_rates.append((args.decode_tokens - 1) / dt)
        log(
            f"  decode {args.decode_tokens} run {i + 1}: {dt * 1e3 / (args.decode_tokens - 1):6.2f} ms/token"
            f"  {dec_rates[-1]:8.1f} tok/s"
        )

    result = {
        "engine": "llama.cpp",
        "decode_tok_s": round(max(dec_rates), 1),
        "prefill512_tok_s" if args.prefill_tokens == 512 else f"prefill{args.prefill_tokens}_tok_s": round(
            max(pre_rates), 1
        ),
        "decode_tok_s_median": round(statistics.median(dec_rates), 1),
        "prefill_tok_s_median": round(statistics.median(pre_rates), 1),
        "threads": args.threads,
        "decode_tokens": args.decode_tokens,
        "prefill_tokens": args.prefill_tokens,
        "repeats": args.repeats,
        "model": os.path.basename(args.model),
        "llama_cpp_python": llama_cpp.__version__,
    }
    log(
        f"decode  (batch 1, {args.decode_tokens} tokens): best {result['decode_tok_s']} tok/s, "
        f"median {result['decode_tok_s_median']} tok/s"
    )
    log(
        f"prefill ({args.prefill_tokens} tokens): best {max(pre_rates):.1f} tok/s, "
        f"median {result['prefill_tok_s_median']} tok/s"
    )
    log(f"greedy continuation (first run): {llm.detokenize(first_out[:24]).decode(errors='replace')!r}")
    print(json.dumps(result, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
