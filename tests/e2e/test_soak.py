"""Soak, as the suite runs it: scripts/soak.py's full 10 minutes of steady mixed
load from 8 clients against `pdserve serve` (default model and KV pool), RSS
sampled every 10 s; the line fitted through the samples after a 60 s warm-up must
not rise more than 5% by the end, every request must be a complete success, and the
server must stay up.

The KV pool is touched when the engine starts, so RSS does not climb while blocks
are first used; the warm-up covers allocator and tokenizer caches settling.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts"))

import soak  # noqa: E402

if __name__ == "__main__":
    sys.exit(soak.run(soak.parse_args([
        "--duration", "600", "--interval", "10", "--warmup", "60", "--clients", "8"])))
