"""The training behind ``fastvae train``.

One :class:`TrainConfig` describes a run; :func:`train` runs it (alone, or as one rank of a
``torchrun`` job) and writes the output folder:

* ``checkpoint.pt``: everything needed to continue exactly (model, optimizer, schedules, step,
  metrics, RNG states, the config), written atomically;
* ``metrics.json``: the config, library versions, per-epoch and per-interval loss, distortion,
  rate, beta and samples/s;
* PNGs (when matplotlib is installed): curves, reconstructions, latent traversals, prior samples.

Determinism.  Everything random in a step is a function of ``(seed, step)``: the global batch is
a slice of a stream of per-pass permutations of the dataset, and the reparameterization noise for
the global batch is drawn from a generator re-seeded from ``(seed, step)``.  So a resumed run
replays exactly what an uninterrupted one does, and ``N`` processes with ``--batch-size G`` see,
rank by rank, the slices of the batch and of the noise that one process with ``G`` sees: with
``reduction='mean'`` per rank and DDP's gradient averaging, the gradient is the single-process
mean over ``G`` up to float rounding.

Epochs.  For a finite dataset an epoch is ``len(data) // batch_size`` steps (about one pass; the
index stream itself never drops or repeats a sample within a pass).  The ``shapes`` stream is
endless, so an epoch there is a fixed number of steps (``steps_per_epoch``, default 100).

``fastvae.train`` is this package; the function is ``fastvae.train.train`` (``from fastvae.train
import train``), defined in ``run.py``.  One file per job:

=================  ===========================================================================
``config.py``      :class:`TrainConfig`, its defaults and choices, its checks
``model.py``       the model factory (:func:`build_model`)
``objective.py``   the differentiated objective; the capacity rule under DDP
``seeding.py``     the data order, the noise seeds, the evaluation samples
``distributed.py`` torchrun: ranks, the process group, collectives
``plan.py``        the run resolved before it starts: device, data, batch, budget
``parts.py``       model, optimizer, schedules (chosen from the table of kinds), metrics
``resume.py``      reading the checkpoint to continue from, and its config
``checkpoint.py``  what ``checkpoint.pt`` holds; writing and restoring it
``metrics.py``     the training clock, the metric sums, the evaluation, ``metrics.json``'s names
``output.py``      the output folder
``trainer.py``     the loop
``console.py``     the banner and the log lines
``signals.py``     SIGINT/SIGTERM: stop after the step, with a checkpoint
``process.py``     torch's process-wide state, restored when the run ends
``optim.py``       the learning rate of a step, the moving average of the weights, the fp16 scaler
``logs.py``        ``metrics.csv``, ``epochs.csv`` and TensorBoard
``report.py``      the PNGs
``run.py``         :func:`train` and :class:`TrainResult`
``load.py``        :func:`load_model` and :func:`load_run`: a trained model back from its run folder
=================  ===========================================================================

Held out.  By default 5% of a finite dataset (``--val-fraction``) and 1024 images of ``shapes`` are
left out of training; each epoch ends with their distortion, rate and ELBO (``epochs`` in
``metrics.json``, ``epochs.csv``, the points of ``curves.png``), ``best.pt`` keeps the checkpoint of
the lowest held-out negative ELBO, and the plots show held-out samples.
"""
from .checkpoint import CHECKPOINT_NAME, load_checkpoint
from .config import (
    AMP_MODES,
    BETA_SCHEDULES,
    DEFAULT_STEPS,
    DEFAULT_TIME_LIMIT,
    LIKELIHOODS,
    LOSS_BACKENDS,
    MODELS,
    RESUMABLE_KEYS,
    SHAPES_STEPS_PER_EPOCH,
    TrainConfig,
)
from .errors import TrainError
from .load import LoadedRun, load_model, load_run
from .metrics import METRICS_NAME
from .model import build_model
from .run import TrainResult, train

__all__ = [
    "TrainConfig", "TrainError", "TrainResult", "train", "load_checkpoint", "build_model", "load_model", "load_run",
    "LoadedRun",
    "CHECKPOINT_NAME", "METRICS_NAME", "MODELS", "LOSS_BACKENDS", "AMP_MODES", "BETA_SCHEDULES", "LIKELIHOODS",
    "DEFAULT_STEPS", "DEFAULT_TIME_LIMIT", "SHAPES_STEPS_PER_EPOCH", "RESUMABLE_KEYS",
]
