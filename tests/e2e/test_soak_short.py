"""Short soak (the suite's version of scripts/soak.py): 90 s of steady mixed load
from 8 clients against `pdserve serve --kv-cache-mb 64`, RSS sampled every 3 s; the
line fitted through the samples after a 30 s warm-up must not rise more than 5% by
the end, every request must be a complete success, and the server must stay up.

Why a short one in the suite: the full 10-minute soak is too long next to the rest
of the CI run, but 90 s still catches gross leaks (tens of KiB per request, e.g. a
KV block or a token buffer kept per request) at ~1.5 minutes of CI time. The KV pool
is 64 MiB because its pages are touched lazily as blocks are first used: the default
256 MiB pool takes about a minute of load to be fully resident, which would read as
growth in a window this short.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts"))

import soak  # noqa: E402

if __name__ == "__main__":
    sys.exit(soak.run(soak.parse_args([
        "--duration", "90", "--interval", "3", "--warmup", "30", "--clients", "8",
        "--serve-arg=--kv-cache-mb", "--serve-arg=64"])))
