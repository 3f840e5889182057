"""The Lightning and Hugging Face callbacks run a few real steps into a store."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from normlab.runs.store import Store


def _check_logged(store: Store, name: str, steps: int) -> dict:
    (rid,) = store.runs()["id"]
    run = store.run(rid)
    assert run["status"] == "done" and run["source"] == "external" and run["norm"] == name
    frame = store.metrics(rid)
    recorded = sorted(frame.loc[frame["site"] == "param", "step"].unique())
    assert recorded == list(range(0, steps, 2))  # every=2
    grads = frame[(frame["metric"] == "grad_norm") & (frame["site"] == "param")]
    assert (grads["value"] > 0).all()
    return {"run": run, "frame": frame}


def test_lightning_callback(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from normlab.integrations.lightning import NormLabCallback

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.save_hyperparameters({"lr": 0.1, "width": 16})
            self.net = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(),
                                     nn.Linear(16, 3))

        def training_step(self, batch, _):
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def validation_step(self, batch, _):
            x, y = batch
            self.log("val_loss", nn.functional.cross_entropy(self.net(x), y))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 8), torch.randint(0, 3, (64,)))
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    store = Store(tmp_path / "s.sqlite")
    trainer = pl.Trainer(max_steps=8, limit_val_batches=2, val_check_interval=4,
                         callbacks=[NormLabCallback("lit-mlp", store=store, every=2)],
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu",
                         default_root_dir=tmp_path)
    trainer.fit(Module(), loader, loader)
    got = _check_logged(store, "lit-mlp", 8)
    assert got["run"]["config"] == {"lr": 0.1, "width": 16}
    frame = got["frame"]
    assert {"loss"} <= set(frame.loc[frame["site"] == "train", "metric"])
    assert set(frame.loc[frame["site"] == "val", "metric"]) == {"loss"}


def test_huggingface_callback(tmp_path):
    transformers = pytest.importorskip("transformers")
    from normlab.integrations.huggingface import NormLabHFCallback

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32,
                                     max_position_embeddings=16, num_labels=2)
    model = transformers.BertForSequenceClassification(config)
    rows = [{"input_ids": torch.randint(1, 50, (8,)), "attention_mask": torch.ones(8, dtype=torch.long),
             "labels": torch.tensor(i % 2)} for i in range(32)]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=4, logging_steps=2,
        save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, eval_strategy="steps",
        eval_steps=3, per_device_eval_batch_size=8)
    store = Store(tmp_path / "s.sqlite")
    trainer = transformers.Trainer(model=model, args=args, train_dataset=rows,
                                   eval_dataset=rows[:8],
                                   callbacks=[NormLabHFCallback("bert-tiny", store=store,
                                                                every=2)])
    trainer.train()
    got = _check_logged(store, "bert-tiny", 6)
    frame = got["frame"]
    assert got["run"]["config"]["max_steps"] == 6
    assert "loss" in set(frame.loc[frame["site"] == "train", "metric"])
    assert "loss" in set(frame.loc[frame["site"] == "val", "metric"])
