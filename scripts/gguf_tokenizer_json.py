"""Writes an HF tokenizer directory (tokenizer.json + tokenizer_config.json) from a GGUF
file with a GPT-2-style byte-level BPE vocabulary (the default SmolLM2 model), so that
Python tools that want an HF tokenizer (aiperf) can size prompts like the server does.

Usage: python gguf_tokenizer_json.py MODEL.gguf OUT_DIR   (needs the `gguf` and
`tokenizers` packages). Pre-tokenizer: single digits, then the GPT-2 regex — what
SmolLM2's own tokenizer.json does; token_type 3 (control) tokens become special.
"""
import json
import os
import sys
import gguf
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, AddedToken

path, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
r = gguf.GGUFReader(path)
if bytes(r.fields["tokenizer.ggml.model"].parts[-1]).decode() != "gpt2":
    sys.exit(f"{path}: not a GPT-2-style BPE vocabulary")
def strings(name):
    f = r.fields[name]
    return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
def ints(name):
    f = r.fields[name]
    return [int(f.parts[i][0]) for i in f.data]
def scalar(name):
    f = r.fields.get(name)
    return None if f is None else int(f.parts[f.data[0]][0])
tokens = strings("tokenizer.ggml.tokens")
merges = [tuple(m.split(" ", 1)) for m in strings("tokenizer.ggml.merges")]
types = ints("tokenizer.ggml.token_type")
vocab = {t: i for i, t in enumerate(tokens)}
tok = Tokenizer(models.BPE(vocab, merges))
tok.pre_tokenizer = pre_tokenizers.Sequence([
    pre_tokenizers.Digits(individual_digits=True),
    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
])
tok.decoder = decoders.ByteLevel()
tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                        for t, ty in zip(tokens, types) if ty == 3])
tok.save(f"{out}/tokenizer.json")
bos, eos = scalar("tokenizer.ggml.bos_token_id"), scalar("tokenizer.ggml.eos_token_id")
tmpl = r.fields.get("tokenizer.chat_template")
cfg = {"tokenizer_class": "PreTrainedTokenizerFast",
       "bos_token": tokens[bos] if bos is not None else None,
       "eos_token": tokens[eos] if eos is not None else None,
       "chat_template": bytes(tmpl.parts[tmpl.data[0]]).decode() if tmpl else None}
json.dump(cfg, open(f"{out}/tokenizer_config.json", "w"))
print(len(tokens), "tokens,", len(merges), "merges,", sum(t == 3 for t in types), "special")
