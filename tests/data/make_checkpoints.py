"""Writes the checkpoints under tests/data/ that tests/test_checkpoint_compat.py resumes.

They were written by the trainer as it was before fastvae/train.py became the fastvae/train/
package (commit 92e903c), so the test shows that a checkpoint of that code still resumes.  Run it
again only to add a new format version, never to replace these files:

    FASTVAE_BACKEND=torch python tests/data/make_checkpoints.py
"""
import os
import shutil
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))

# name -> config entries; the data is data() below, passed as a torch Dataset.
RUNS = {
    "v1-constrained": dict(target_rate=3.0, beta_lr=0.05),
    "v1-capacity-cyclical": dict(capacity=5.0, capacity_steps=4, beta_schedule="cyclical", cycle_steps=3),
}
COMMON = dict(model="mlp", hidden=(16,), latent_dim=2, batch_size=8, lr=3e-3, steps_per_epoch=4,
              log_every=2, checkpoint_every=3, plots=False, device="cpu", seed=0)
STEPS = 3
RESUMED_STEPS = 6


def data():
    """40 random 1x6x6 images in [0, 1) from a seeded CPU generator (the same on every machine)."""
    images = torch.rand(40, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    return torch.utils.data.TensorDataset(images)


def main() -> int:
    from fastvae.train import TrainConfig, train

    torch.set_num_threads(1)
    for name, extra in RUNS.items():
        out = os.path.join(HERE, name)
        config = TrainConfig(**COMMON, **extra, steps=STEPS)
        train(config, out=out, overwrite=True, dataset=data(), progress=False, log=lambda *_: None)
        os.unlink(os.path.join(out, "metrics.json"))  # only the checkpoint is kept
        print("wrote", os.path.join(out, "checkpoint.pt"))
        # What that code made of the checkpoint when resumed to RESUMED_STEPS: the reference the
        # refactored trainer must reproduce.
        work = os.path.join(HERE, f".{name}-resumed")
        shutil.copytree(out, work, dirs_exist_ok=True)
        result = train(TrainConfig(steps=RESUMED_STEPS), resume=work, explicit={"steps"}, dataset=data(),
                       progress=False, log=lambda *_: None)
        ckpt = torch.load(os.path.join(work, "checkpoint.pt"), weights_only=True)
        reference = {"step": result.step, "model": ckpt["model"], "beta_schedule": ckpt["beta_schedule"],
                     "capacity_schedule": ckpt["capacity_schedule"],
                     "history": [{k: v for k, v in h.items() if k not in ("samples_per_s", "time_s")}
                                 for h in ckpt["metrics"]["history"]]}
        torch.save(reference, os.path.join(out, f"resumed-{RESUMED_STEPS}.pt"))
        shutil.rmtree(work)
        print("wrote", os.path.join(out, f"resumed-{RESUMED_STEPS}.pt"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
