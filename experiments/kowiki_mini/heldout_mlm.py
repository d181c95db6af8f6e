"""Held-out masked-LM and next-sentence scores of a ReforBERT model folder.

Scores pretraining instances made from documents the model never trained on: MLM loss per masked token,
MLM accuracy over all masked tokens, accuracy at the positions replaced by ``[MASK]`` (the 10% left
unchanged are solved by copying the input, so only this number shows what the model learned from
context) and NSP accuracy. Masks are drawn from a fixed seed, so two models are scored on the same masks.

    python experiments/kowiki_mini/heldout_mlm.py MODEL_DIR HELDOUT_SHARDS --output scores.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

import reforbert  # noqa: F401 - registers ReforBERT with the Auto classes
from reforbert.configuration_reforbert import IGNORE_INDEX, MASK_ID
from reforbert.data.collator import PretrainingCollator
from reforbert.data.shards import open_pretraining_data
from reforbert.modeling_reforbert import ReforBertForPreTraining


@torch.no_grad()
def score(
    model_dir: Path, shards: Path, batch_size: int, mask_seed: int, mlm_probability: float, attention: str
) -> dict:
    model = ReforBertForPreTraining.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    model.config.attention_backend = attention
    dataset = open_pretraining_data(shards)
    collator = PretrainingCollator(model.config.vocab_size, mlm_probability=mlm_probability, seed=mask_seed)
    sums = dict(loss=0.0, masked=0, correct=0, replaced=0, correct_replaced=0, nsp_correct=0, pairs=0)
    longest = 0
    for start in tqdm(range(0, len(dataset), batch_size), desc="held-out", unit="batch"):
        batch = collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        labels = batch["labels"]
        longest = max(longest, labels.shape[1])
        selected = labels != IGNORE_INDEX
        outputs = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            token_type_ids=batch["token_type_ids"],
            return_dict=True,
        )
        logits = outputs.prediction_logits[selected].float()
        true = labels[selected]
        correct = logits.argmax(-1) == true
        replaced = batch["input_ids"][selected] == MASK_ID
        sums["loss"] += float(torch.nn.functional.cross_entropy(logits, true, reduction="sum"))
        sums["masked"] += int(true.numel())
        sums["correct"] += int(correct.sum())
        sums["replaced"] += int(replaced.sum())
        sums["correct_replaced"] += int((correct & replaced).sum())
        nsp = outputs.seq_relationship_logits.argmax(-1) == batch["next_sentence_label"]
        sums["nsp_correct"] += int(nsp.sum())
        sums["pairs"] += int(nsp.numel())
    return {
        "model": str(model_dir),
        "heldout_data": str(shards),
        "attention": attention,
        "lsh_bucket_size": model.config.lsh_bucket_size,
        "lsh_num_hashes": model.config.lsh_num_hashes,
        "longest_instance": longest,
        "instances": len(dataset),
        "mlm_probability": mlm_probability,
        "mask_seed": mask_seed,
        "masked_tokens": sums["masked"],
        "mlm_loss": sums["loss"] / sums["masked"],
        "mlm_accuracy": sums["correct"] / sums["masked"],
        "mlm_accuracy_at_mask": sums["correct_replaced"] / sums["replaced"],
        "nsp_accuracy": sums["nsp_correct"] / sums["pairs"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model_dir", type=Path, help="A ReforBERT model folder (weights, config, tokenizer).")
    parser.add_argument(
        "shards", type=Path, help="Held-out pretraining instances (`reforbert pretraining-data`)."
    )
    parser.add_argument("--output", type=Path, help="Write the scores to this JSON file as well.")
    parser.add_argument("--batch-size", type=int, default=64, help="Instances per forward pass.")
    parser.add_argument("--mask-seed", type=int, default=1, help="The seed of the fixed masks.")
    parser.add_argument("--mlm-probability", type=float, default=0.15, help="The fraction of tokens masked.")
    parser.add_argument(
        "--attention",
        choices=("full", "lsh"),
        default="full",
        help="Exact attention (as pretrained) or LSH attention over the same weights.",
    )
    args = parser.parse_args()
    scores = score(
        args.model_dir, args.shards, args.batch_size, args.mask_seed, args.mlm_probability, args.attention
    )
    text = json.dumps(scores, indent=1)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
