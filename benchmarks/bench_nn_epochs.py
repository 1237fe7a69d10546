"""Seconds per training epoch of the LSTM and the TFT on one refit's training rows of the quick profile.

    python benchmarks/bench_nn_epochs.py                 # CPU, fp32
    python benchmarks/bench_nn_epochs.py --device cuda   # GPU (TFT under bf16 autocast)

Prints a table and writes benchmarks/results/nn_epochs.json (one entry per device, merged into the file).
"""
import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from macd_nb.core.config import library_versions, profile_config, resolve_device
from macd_nb.models.lstm import lstm_stage
from macd_nb.core.prepare import load_table, prepare_run
from macd_nb.models.sequence_stage import SequenceData
from macd_nb.models.sequences import Standardizer, TrainSettings, sequence_features, train_model, with_full_window
from macd_nb.models.tft import tft_stage
from macd_nb.core.validation import inner_split

RESULTS = Path(__file__).resolve().parent / "results" / "nn_epochs.json"


def bench(stage, data, train_rows, config, device: str, epochs: int) -> dict:
    "Train `epochs` epochs of one stage's model on `train_rows`; seconds per epoch."
    length = config.nn.sequence_length
    fit_rows, stop_rows = inner_split(with_full_window(train_rows, length), config.validation.inner_valid_fraction, purge=config.validation.purge_bars)
    inputs = torch.from_numpy(Standardizer.fit(data.features, train_rows).transform(data.features)).to(device)
    targets = torch.from_numpy(data.targets[:, [data.heads.index(h) for h in stage.heads]].copy()).to(device)
    torch.manual_seed(config.seed)
    model = stage.model_class(n_features=data.features.shape[1], n_outputs=len(stage.heads), **stage.model_kwargs).to(device)
    settings = TrainSettings(epochs=epochs, batch_size=config.nn.batch_size, learning_rate=config.nn.learning_rate,
                             patience=epochs + 1, device=device, bf16=stage.bf16, seed=config.seed)
    if device == "cuda": torch.cuda.synchronize()
    history = train_model(model, inputs, targets, fit_rows, stop_rows, length, settings)["history"]
    seconds = [h["seconds"] for h in history]
    return {"model": stage.name, "dtype": settings.autocast_dtype, "epochs": epochs, "n_fit_rows": len(fit_rows),
            "seconds_per_epoch": float(np.mean(seconds[1:] if len(seconds) > 1 else seconds)),
            "first_epoch_s": seconds[0], "parameters": sum(p.numel() for p in model.parameters())}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    config = profile_config("quick")
    with tempfile.TemporaryDirectory() as run_dir:
        prepare_run(config, run_dir)
        table, summary = load_table(run_dir, "1h")
    names = sequence_features(summary, config.nn.max_features)
    data = SequenceData.from_table(table, names, config.validation.horizons, config.validation.label_horizon)
    train_rows = np.arange(config.validation.train_bars)
    rows = [bench(stage, data, train_rows, config, device, args.epochs) for stage in (lstm_stage(config), tft_stage(config))]
    print(f"quick profile: {config.validation.train_bars} training rows, sequence {config.nn.sequence_length}, hidden {config.nn.hidden}, "
          f"{len(names)} features, batch {config.nn.batch_size}, device {device}, threads {torch.get_num_threads()}")
    print(f"{'model':<6} {'dtype':<5} {'params':>8} {'s/epoch':>8} {'1st epoch s':>11}")
    for row in rows:
        print(f"{row['model']:<6} {row['dtype']:<5} {row['parameters']:>8} {row['seconds_per_epoch']:>8.2f} {row['first_epoch_s']:>11.2f}")
    record = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    record[device] = {"rows": rows, "threads": torch.get_num_threads(), "profile": "quick", "platform": platform.platform(),
                      "gpu": torch.cuda.get_device_name() if device == "cuda" else None, "versions": library_versions(),
                      "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
