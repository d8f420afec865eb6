"""Reproduce the built-in ``tiny-en`` base model: corpus, tokenizer, training, save.

    python scripts/tiny_en/build.py [--out services/engine/_builtin/tiny-en] [--steps 2000]

Everything comes from this directory: the corpus from ``corpus.py`` (a seeded grammar,
40,000 documents, 12 MB), a byte-level BPE tokenizer of 3,072 tokens trained on it, and
a four-layer Llama (hidden 256, eight heads of 32, so vLLM's CPU attention runs it too)
trained from a seeded init: 2,000 steps of 32 x 128 tokens. About 20 minutes on two CPU
cores; held-out loss 0.52. Same torch version and seed, same weights (CPU kernels are
deterministic for this loop); a different machine may differ in the last bits, never in
what the model writes.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import generate_corpus

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "services" / "engine" / "_builtin" / "tiny-en"
SPECIAL_TOKENS = ("<|bos|>", "<|eos|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>")
MESSAGE = "<|{role}|>{content}<|eos|>"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}<|eos|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
MODEL_SHAPE = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": True,
}


def train_tokenizer(texts: list[str], vocab_size: int):  # -> PreTrainedTokenizerFast
    from tokenizers import Tokenizer
    from tokenizers import decoders
    from tokenizers import models
    from tokenizers import pre_tokenizers
    from tokenizers import trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    bos, eos, pad = SPECIAL_TOKENS[:3]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        additional_special_tokens=list(SPECIAL_TOKENS[3:]),
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def token_stream(tokenizer, texts: list[str]) -> torch.Tensor:
    ids: list[int] = []
    for start in range(0, len(texts), 1000):
        for row in tokenizer(texts[start : start + 1000], add_special_tokens=False)["input_ids"]:
            ids.extend(row)
    return torch.tensor(ids, dtype=torch.long)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--documents", type=int, default=40_000)
    parser.add_argument("--vocab-size", type=int, default=3072)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from transformers import LlamaConfig
    from transformers import LlamaForCausalLM

    torch.manual_seed(args.seed)
    texts = list(
        generate_corpus(args.documents, seed=args.seed, chat_template=MESSAGE, end="<|eos|>")
    )
    tokenizer = train_tokenizer(texts, args.vocab_size)
    stream = token_stream(tokenizer, texts)
    held_out = stream[-20 * args.block :]
    stream = stream[: -20 * args.block]
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **MODEL_SHAPE,
    )
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    warmup = max(1, args.steps // 20)

    def rate(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (args.steps - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
    generator = torch.Generator().manual_seed(args.seed)
    started = time.monotonic()
    model.train()
    for step in range(args.steps):
        offsets = torch.randint(0, len(stream) - args.block - 1, (args.batch,), generator=generator)
        batch = torch.stack([stream[o : o + args.block] for o in offsets.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == args.steps - 1:
            elapsed = time.monotonic() - started
            print(f"step {step:5d}  loss {loss.item():.3f}  {elapsed:6.0f} s", flush=True)
    model.eval()
    with torch.no_grad():
        blocks = held_out.view(-1, args.block)
        eval_loss = model(input_ids=blocks, labels=blocks).loss.item()
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(args.out))
    tokenizer.save_pretrained(str(args.out))
    recipe = {
        "recipe": "scripts/tiny_en/build.py",
        "documents": args.documents,
        "steps": args.steps,
        "seed": args.seed,
        "eval_loss": round(eval_loss, 4),
        "torch": torch.__version__,
    }
    (args.out / "loramux_recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
    print(json.dumps(recipe))


if __name__ == "__main__":
    main()
