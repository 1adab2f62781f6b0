//! Resolving `--model` HF repo ids (OWNER: helper G).
