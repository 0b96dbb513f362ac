"""A tokenizer and a small corpus that torchtitan's trainer can run on (its own test assets are not in its wheel),
for the tests and the GPU recipe (docs/distributed.md). No torchtitan import: safe on any machine.

    python tests/integrations/torchtitan_assets.py DIR     # DIR/tokenizer.json, DIR/tokenizer_config.json, DIR/data/
"""
from __future__ import annotations

import json
import os
import random
import sys


def make_assets(folder: str, seed: int = 0, words: int = 200, docs: int = 400) -> None:
    """A word-level tokenizer (``tokenizers``) and a corpus of ``docs`` synthetic documents as a JSON-lines
    dataset that torchtitan's "c4_test" loader reads (``load_dataset(folder, split="train")``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    rng = random.Random(seed)
    vocab_words = [f"w{i}" for i in range(words)]
    specials = ["<unk>", "<s>", "</s>"]
    vocab = {tok: i for i, tok in enumerate(specials + vocab_words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    os.makedirs(os.path.join(folder, "data"), exist_ok=True)
    tok.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True,
                   "add_eos_token": True}, f)
    weights = [1.0 / (i + 1) for i in range(words)]  # Zipf-like word frequencies: something to learn
    with open(os.path.join(folder, "data", "train.jsonl"), "w") as f:
        for _ in range(docs):
            f.write(json.dumps({"text": " ".join(rng.choices(vocab_words, weights, k=rng.randint(40, 120)))}) + "\n")


if __name__ == "__main__":
    make_assets(sys.argv[1])
