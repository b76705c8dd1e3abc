"""The ``fastvae`` command: ``fastvae train`` (train a VAE, see :mod:`fastvae.train`), ``fastvae
sample`` (a grid of prior samples of a trained run), ``fastvae eval`` (what a run learned: rate,
distortion, the importance-sampled log-likelihood, per-dimension KL, MIG; :mod:`fastvae.train.evaluate`),
``fastvae sweep`` (one run per beta and the rate-distortion curve; :mod:`fastvae.train.sweep`) and
``fastvae bench`` (time the fused ops, see :mod:`fastvae.bench`).

``python -m fastvae ...`` is the same command.  Many GPUs: ``torchrun --nproc-per-node N -m fastvae train ...``.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Optional, Sequence

from ._argparse import comma_separated
from .schedules.kinds import kind_help
from .train import config as tc

__all__ = ["main", "build_parser", "train_config_from_args"]

_TRAIN_EPILOG = """\
examples:
  fastvae train                                   # beta-VAE on procedural shapes (~2 min on a laptop CPU)
  fastvae train --out runs/shapes --steps 20000 --batch-size 4096 --amp bf16 --compile   # on a GPU
  fastvae train --data digits --model mlp --beta 1 --epochs 50
  fastvae train --data images.npz:x --likelihood gaussian --learn-scale
  fastvae train --target-rate 15                  # constrained beta: hold the KL at 15 nats
  fastvae train --capacity 25 --capacity-steps 5000 --beta 100      # Burgess et al. capacity
  fastvae train --objective tcvae --beta 6                           # beta-TCVAE: penalize the TC
  fastvae train --objective iwae --k 5                               # the IWAE bound
  fastvae train --free-bits 0.5                                      # a floor of 0.5 nats per dimension
  fastvae train --resume runs/shapes --steps 40000                   # continue (exactly) and extend
  torchrun --nproc-per-node 8 -m fastvae train --batch-size 8192     # DDP; --batch-size is global

Without --steps/--epochs a run trains {steps} steps or {limit:g} s, whichever comes first; --resume continues
it (with the same time limit per session; --time-limit 0 lifts it).  The output folder gets checkpoint.pt,
best.pt, metrics.json, metrics.csv, epochs.csv and PNGs (curves, reconstructions, traversals, samples);
fastvae sample RUN writes more samples, and fastvae.load_model(RUN) gives the model back in Python.
""".format(steps=tc.DEFAULT_STEPS, limit=tc.DEFAULT_TIME_LIMIT)


def _int_at_least(minimum: int, expected: str):
    """An argparse type: an integer >= minimum, with a message naming what was expected."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_nonneg_int = _int_at_least(0, "an integer >= 0")


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _widths(text: str) -> tuple:
    return tuple(comma_separated(text, int, "positive layer widths", lambda w: w >= 1, example="512,256"))


def _fraction(text: str) -> float:
    value = _float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}")
    return value


def _data_and_model_options(g, d) -> None:
    g.add_argument("--data", metavar="NAME|FILE",
                   help=f"'shapes' (procedural dSprites-like 64x64 sprites), 'digits' (scikit-learn's 8x8 digits) or a "
                        f".npy/.npz file ('file.npz:key' for one array); default {d.data}")
    g.add_argument("--data-layout", choices=tc.DATA_LAYOUTS,
                   help="how 4-D arrays are read: auto (default) recognises channels-last images (N, H, W, C) with C "
                        "in 1, 3, 4 and transposes them to (N, C, H, W)")
    g.add_argument("--val-fraction", type=_fraction, metavar="X",
                   help=f"fraction of a finite dataset held out for validation (default {tc.DEFAULT_VAL_FRACTION:g}; "
                        f"{tc.SHAPES_VAL_SAMPLES} images of shapes); 0: none")
    g.add_argument("--model", choices=tc.MODELS,
                   help="glimpse (object-centred: position and size from the image's moments in z[0:3], shape from "
                        "a centred window; one object on a dark background), conv (Burgess et al. 2018, 32x32 or "
                        "64x64 images) or mlp; default auto: glimpse on shapes (with --latent-dim 4 or more), conv for "
                        "other images that fit it, else mlp")
    g.add_argument("--latent-dim", type=_positive_int, metavar="N", help=f"size of z (default {d.latent_dim})")
    g.add_argument("--hidden", type=_widths, metavar="W1,W2,..",
                   help=f"mlp layer widths, e.g. 512,256 (default {','.join(map(str, d.hidden))})")
    g.add_argument("--likelihood", choices=tc.LIKELIHOODS, help=f"decoder likelihood (default {d.likelihood})")
    g.add_argument("--log-scale", type=_float, metavar="X",
                   help="gaussian/laplace: fixed log of the decoder scale (default 0)")
    g.add_argument("--learn-scale", action="store_true", help="gaussian/laplace: learn the decoder scale")


def _objective_options(g, d) -> None:
    g.add_argument("--beta", type=_float, metavar="X",
                   help=f"weight of the rate (default {d.beta:g}); the gamma of a capacity run; the initial beta of a "
                        "constrained one")
    g.add_argument("--beta-schedule", choices=tc.BETA_SCHEDULES,
                   help=f"{kind_help()}; default warmup, or constrained with --target-rate")
    g.add_argument("--warmup-steps", type=_nonneg_int, metavar="N",
                   help=f"warmup: steps to reach --beta (default {d.warmup_steps})")
    g.add_argument("--beta-start", type=_float, metavar="X", help="warmup: beta at step 0 (default 0)")
    g.add_argument("--cycle-steps", type=_positive_int, metavar="N",
                   help=f"cyclical: steps per cycle (default {d.cycle_steps})")
    g.add_argument("--cycle-ratio", type=_float, metavar="X",
                   help="cyclical: fraction of a cycle spent ramping (default 0.5)")
    g.add_argument("--n-cycles", type=_positive_int, metavar="N", help="cyclical: cycles before beta stays at --beta")
    g.add_argument("--target-rate", type=_float, metavar="X",
                   help="constrained beta: the KL to hold, in nats per sample")
    g.add_argument("--beta-lr", type=_float, metavar="X",
                   help=f"constrained beta: step of log(beta) per unit of error (default {d.beta_lr:g})")
    g.add_argument("--beta-alpha", type=_float, metavar="X",
                   help=f"constrained beta: moving average of the constraint, in [0, 1) (default {d.beta_alpha:g})")
    g.add_argument("--beta-error", choices=tc.BETA_ERRORS,
                   help=f"constrained beta: the error the dual ascent follows, log(rate/target) or rate - target "
                        f"(default {d.beta_error})")
    g.add_argument("--beta-max-step", type=_float, metavar="X",
                   help="constrained beta: bound of the change of log(beta) per step"
                        + (f" (default {d.beta_max_step:g})" if d.beta_max_step else ""))
    g.add_argument("--objective", choices=tc.OBJECTIVES,
                   help="beta-vae: distortion + beta * rate (default); tcvae: beta-TCVAE, distortion + alpha * MI + "
                        "beta * TC + gamma * dimension-wise KL (Chen et al. 2018; --beta weighs the TC); iwae: the "
                        "importance-weighted bound with --k samples (Burda et al. 2016; no beta)")
    g.add_argument("--alpha", dest="tc_alpha", type=_float, metavar="X",
                   help=f"tcvae: weight of the index-code mutual information (default {d.tc_alpha:g})")
    g.add_argument("--gamma", dest="tc_gamma", type=_float, metavar="X",
                   help=f"tcvae: weight of the dimension-wise KL (default {d.tc_gamma:g})")
    g.add_argument("--tc-estimator", choices=tc.TC_ESTIMATORS,
                   help=f"tcvae: minibatch stratified (mss) or weighted (mws) sampling (default {d.tc_estimator})")
    g.add_argument("--k", dest="iwae_k", type=_positive_int, metavar="K",
                   help=f"iwae: importance samples per input (default {d.iwae_k}; 1 is the ELBO)")
    g.add_argument("--free-bits", type=_float, metavar="NATS",
                   help="beta-vae: free bits, a floor of NATS on the KL of each latent dimension (batch mean; "
                        "Kingma et al. 2016) or of each sample (--free-bits-mode sample); the rate reported stays "
                        "the true KL")
    g.add_argument("--free-bits-mode", choices=tc.FREE_BITS_MODES,
                   help=f"free bits per latent dimension or per sample (default {d.free_bits_mode})")
    g.add_argument("--capacity", type=_float, metavar="X",
                   help="capacity C in nats (Burgess et al. 2018): beta * |rate - C|")
    g.add_argument("--capacity-steps", type=_nonneg_int, metavar="N",
                   help="steps over which C ramps from 0 (default 0)")
    g.add_argument("--loss-backend", choices=tc.LOSS_BACKENDS,
                   help="fastvae (fused ops, default) or torch: the same training with the loss written in eager "
                        "PyTorch (BCE-with-logits + KL formula), for comparison")


def _optimization_options(g, d) -> None:
    g.add_argument("--batch-size", type=_positive_int, metavar="N",
                   help=f"global batch, split across processes (default {d.batch_size})")
    g.add_argument("--lr", type=_float, metavar="X", help=f"Adam learning rate (default {d.lr:g})")
    g.add_argument("--lr-warmup", type=_nonneg_int, metavar="N",
                   help=f"steps of linear learning-rate warm-up from 0 (default {d.lr_warmup})")
    g.add_argument("--lr-schedule", choices=tc.LR_SCHEDULES,
                   help=f"the learning rate after the warm-up: constant, cosine (down to --lr-min at the last step) "
                        f"or step (x --lr-gamma every --lr-decay-every steps); default {d.lr_schedule}")
    g.add_argument("--lr-min", type=_float, metavar="X", help="cosine: the final learning rate (default: --lr / 15)")
    g.add_argument("--lr-decay-every", type=_positive_int, metavar="N", help="step: steps between decays")
    g.add_argument("--lr-gamma", type=_float, metavar="X", help=f"step: the factor of a decay (default {d.lr_gamma:g})")
    g.add_argument("--grad-clip", type=_float, metavar="NORM",
                   help="clip the gradient's global norm at NORM" + (f" (default {d.grad_clip:g})" if d.grad_clip
                                                                     else " (default: no clipping)"))
    g.add_argument("--ema-decay", type=_float, metavar="X",
                   help="keep an exponential moving average of the weights (e.g. 0.999), used for the held-out "
                        "numbers, the plots and fastvae.load_model")
    budget = g.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=_positive_int, metavar="N",
                        help="training steps (total, counting resumed ones)")
    budget.add_argument("--epochs", type=_positive_int, metavar="N", help="training epochs (total)")
    g.add_argument("--steps-per-epoch", type=_positive_int, metavar="N",
                   help=f"steps per epoch (default: len(data) // batch size; {tc.SHAPES_STEPS_PER_EPOCH} for the "
                        "endless shapes stream)")
    g.add_argument("--time-limit", type=_float, metavar="X",
                   help=f"stop after this many seconds of training in this session, with a checkpoint; 0: no limit "
                        f"(default: {tc.DEFAULT_TIME_LIMIT:g} s when neither --steps nor --epochs is given, then at "
                        f"most {tc.DEFAULT_STEPS} steps; a resumed run keeps the limit it was started with)")
    g.add_argument("--seed", type=int, metavar="N",
                   help="seed of the initialization, data order and noise (default 0)")


def _hardware_options(g, d) -> None:
    g.add_argument("--device", metavar="DEVICE",
                   help="auto (CUDA when available), cpu, cuda or cuda:N; under torchrun each process takes "
                        "cuda:LOCAL_RANK")
    g.add_argument("--amp", choices=tc.AMP_MODES,
                   help="bf16: run the model under torch.autocast(bfloat16); fp16: autocast(float16) with a "
                        "GradScaler, CUDA only (default none; on the CPU both are slower than float32)")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the model and loss step (for GPUs: on a CPU it costs tens of seconds)")
    g.add_argument("--threads", type=_positive_int, metavar="N", help="CPU threads (torch.set_num_threads)")


def _output_options(g, d) -> None:
    g.add_argument("--out", metavar="FOLDER",
                   help="output folder (default runs/<date-time>); must be new or empty unless --resume or --overwrite")
    g.add_argument("--resume", nargs="?", const="", metavar="PATH",
                   help="continue a run exactly from its checkpoint: a run folder or checkpoint file (default: --out)")
    g.add_argument("--overwrite", action="store_true", help="train into a non-empty --out, replacing its results")
    g.add_argument("--checkpoint-every", type=_positive_int, metavar="N",
                   help=f"steps between checkpoints (default {d.checkpoint_every}; also at the end and on a stop)")
    g.add_argument("--keep-checkpoints", type=_positive_int, metavar="N",
                   help="keep the last N checkpoints as checkpoint-<step>.pt besides checkpoint.pt (default 1: "
                        "checkpoint.pt alone)")
    g.add_argument("--no-best", dest="keep_best", action="store_false",
                   help="do not keep best.pt (the checkpoint of the lowest held-out loss)")
    g.add_argument("--log-every", type=_positive_int, metavar="N",
                   help=f"steps between metric readings (default {d.log_every})")
    g.add_argument("--no-plots", dest="plots", action="store_false", help="do not write the PNGs")
    tb = g.add_mutually_exclusive_group()
    tb.add_argument("--tensorboard", dest="tensorboard", action="store_true",
                    help="write TensorBoard logs (default: when tensorboard is installed: pip install "
                         "fastvae[tensorboard]); metrics.csv and epochs.csv are always written")
    tb.add_argument("--no-tensorboard", dest="tensorboard", action="store_false", help="no TensorBoard logs")
    g.add_argument("--progress", choices=("auto", "bar", "plain"),
                   help="progress bar, plain log lines, or auto: a bar when stdout is a terminal")


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``fastvae train``.  Defaults live in :class:`fastvae.train.TrainConfig`; the
    parser leaves options that were not given out of the namespace, so ``--resume`` can tell what the
    user asked to change."""
    d = tc.TrainConfig()
    _data_and_model_options(parser.add_argument_group("data and model"), d)
    _objective_options(parser.add_argument_group(
        "objective: loss = distortion + beta * rate  (or beta * |rate - C|)"), d)
    _optimization_options(parser.add_argument_group("optimization"), d)
    _hardware_options(parser.add_argument_group("hardware"), d)
    _output_options(parser.add_argument_group("output"), d)
    return parser


def _command(sub, name: str, summary: str, description: str, epilog: str, *, suppress: bool = False):
    """A subcommand's parser: its description wrapped, its epilog (examples) kept as written; ``suppress``
    leaves options that were not given out of the namespace (so a command can tell what the user set)."""
    import textwrap

    extra = {"argument_default": argparse.SUPPRESS} if suppress else {}
    return sub.add_parser(name, help=summary, description=textwrap.fill(description, 100), epilog=epilog,
                          formatter_class=argparse.RawDescriptionHelpFormatter, **extra)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastvae", description="fastvae: fused Triton kernels for training VAEs.",
        epilog="Run 'fastvae COMMAND -h' (train, sample, eval, sweep, bench) for the options of a command.")
    sub = parser.add_subparsers(dest="command", metavar="{train,sample,eval,sweep,bench}")
    train = _command(sub, "train", "train a VAE (default: a beta-VAE on procedural shapes) and plot what it learned",
                     "Train a VAE with fastvae's fused loss and write checkpoints, metrics.json and plots.",
                     _TRAIN_EPILOG, suppress=True)
    add_train_arguments(train)
    add_sample_arguments(_command(
        sub, "sample", "write a grid of samples from the prior of a trained run",
        "Decode z ~ N(0, I) with the model of a fastvae train run and write the images as one grid (PNG), or the "
        "samples as an array (.npy).", "example: fastvae sample runs/20250101-120000 --n 64"))
    add_eval_arguments(_command(
        sub, "eval", "measure a trained run: rate, distortion, ELBO, IS log-likelihood, per-dimension KL, MIG",
        "Evaluate a fastvae train run on its held-out data and write RUN/eval.json and RUN/kl_per_dim.png: rate, "
        "distortion and ELBO, the importance-sampled log-likelihood with its k, the KL of each latent dimension and "
        "the active ones (KL above 0.01 nats), and MIG where the data has ground-truth factors (shapes).",
        "example: fastvae eval runs/20250101-120000 --k 1000"))
    sweep = _command(
        sub, "sweep", "train one run per beta and draw the rate-distortion curve",
        "Train one beta-VAE per beta (same seed, same data order), each a normal run folder OUT/beta-<beta> that "
        "fastvae eval and --resume understand, then write OUT/sweep.json and OUT/rate_distortion.png (distortion "
        "against rate with lines of equal ELBO, and MIG per beta where the data has factors).  An interrupted sweep "
        "continues where it stopped when the same command is run again.  Every fastvae train option applies to "
        "all the runs.", _SWEEP_EPILOG, suppress=True)
    sweep.add_argument("--betas", type=_betas, metavar="B,B,...",
                       help="comma-separated betas (default " + ",".join(f"{b:g}" for b in _default_betas()) + ")")
    sweep.add_argument("--eval-n", type=_positive_int, metavar="N",
                       help="held-out samples each run is evaluated on (default 2000)")
    add_train_arguments(sweep)
    sub.add_parser("bench", help="time fastvae's ops against eager PyTorch and torch.compile", add_help=False)
    return parser


def add_sample_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``fastvae sample``."""
    parser.add_argument("run", metavar="RUN", help="a run folder of fastvae train, or a checkpoint file")
    parser.add_argument("--n", type=_positive_int, default=64, metavar="N", help="samples (default 64)")
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="seed of z (default 0)")
    parser.add_argument("--out", metavar="FILE",
                        help="a .png grid or a .npy array (default RUN/samples-<n>-seed<seed>.png)")
    parser.add_argument("--weights", choices=("auto", "ema", "trained"), default="auto",
                        help="auto: the moving average of the weights when the run kept one (default)")
    parser.add_argument("--best", action="store_true", help="the model of best.pt (lowest held-out loss)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    return parser


_SWEEP_EPILOG = """\
examples:
  fastvae sweep --out runs/sweep                        # betas 0.25 .. 16 on shapes (about 10 min on a 2-core CPU)
  fastvae sweep --betas 0.5,1,4 --steps 2000 --out runs/sweep-long
  fastvae sweep --device cuda --batch-size 1024 --steps 20000 --out runs/sweep-gpu

On a CPU without --steps/--epochs each run trains a short fixed number of steps (said in the output).
Without --out the sweep goes to runs/sweep, so the same command continues an interrupted sweep.
"""


def _default_betas() -> tuple:
    from .train.sweep import DEFAULT_BETAS

    return DEFAULT_BETAS


def _betas(text: str) -> list:
    return comma_separated(text, float, "numbers")  # the sweep checks them (finite, >= 0)


def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``fastvae eval``."""
    parser.add_argument("run", metavar="RUN", help="a run folder of fastvae train")
    parser.add_argument("--k", type=_positive_int, default=1000, metavar="K",
                        help="importance samples of the log-likelihood estimate (default 1000)")
    parser.add_argument("--n", type=_positive_int, default=10000, metavar="N",
                        help="held-out samples for rate, distortion, per-dimension KL and MIG (default 10000, at "
                             "most the run's held-out samples)")
    parser.add_argument("--ll-n", type=_positive_int, default=None, metavar="N",
                        help="samples of the log-likelihood estimate, which costs N * K decoder passes (default: "
                             "all N on a GPU; 50000 // K, at least 16, on a CPU)")
    parser.add_argument("--chunk", type=_positive_int, default=None, metavar="C",
                        help="importance samples decoded at once (default: as many as fit 2^24 elements)")
    parser.add_argument("--device", default="auto", help="auto (default: CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument("--no-mig", dest="mig", action="store_false", help="leave MIG out")
    parser.add_argument("--no-log-likelihood", dest="log_likelihood", action="store_false",
                        help="leave the importance-sampled log-likelihood out")
    parser.add_argument("--progress", choices=("auto", "bar", "plain"), default="auto",
                        help="progress bars, or none (plain); auto: bars when stderr is a terminal")
    return parser


def train_config_from_args(args: argparse.Namespace):
    """(TrainConfig, names of the options given) from a parsed ``fastvae train`` namespace."""
    from .train import TrainConfig

    config = TrainConfig()
    explicit = set()
    for name in [f.name for f in dataclasses.fields(TrainConfig)]:
        if hasattr(args, name):
            setattr(config, name, getattr(args, name))
            explicit.add(name)
    return config, explicit


def _log(message: str) -> None:
    """print, flushed; if stdout is a closed pipe (``fastvae train | head``) training goes on silently."""
    try:
        print(message, flush=True)
    except BrokenPipeError:
        sys.stdout = open(os.devnull, "w")


def _run_train(args: argparse.Namespace) -> int:
    from .data import DataError
    from .train import TrainError, train

    config, explicit = train_config_from_args(args)
    progress = {"bar": True, "plain": False}.get(getattr(args, "progress", "auto"))
    try:
        result = train(config, out=getattr(args, "out", None), resume=getattr(args, "resume", None),
                       overwrite=getattr(args, "overwrite", False), explicit=explicit, progress=progress,
                       log=_log)
    except (TrainError, DataError) as exc:
        print(f"fastvae train: error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:  # an optional dependency of the chosen data (scikit-learn for digits)
        print(f"fastvae train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastvae train: interrupted", file=sys.stderr)
        return 130
    return result.exit_code


def _run_sample(args: argparse.Namespace) -> int:
    from .environment import resolve_device
    from .train import TrainError
    from .train.sample import write_samples

    try:
        device = resolve_device(args.device)
        path = write_samples(args.run, n=args.n, seed=args.seed, out=args.out, weights=args.weights, best=args.best,
                             device=device)
    except (TrainError, ValueError) as exc:
        print(f"fastvae sample: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


def _run_eval(args: argparse.Namespace) -> int:
    from .environment import resolve_device
    from .train import TrainError
    from .train.evaluate import evaluate_run

    progress = {"bar": True, "plain": False}.get(args.progress)
    try:
        evaluate_run(args.run, k=args.k, n=args.n, ll_n=args.ll_n, chunk=args.chunk, device=resolve_device(args.device),
                     mig=args.mig, log_likelihood=args.log_likelihood, progress=progress, log=_log)
    except (TrainError, ValueError) as exc:
        print(f"fastvae eval: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastvae eval: interrupted", file=sys.stderr)
        return 130
    return 0


def _run_sweep(args: argparse.Namespace) -> int:
    from .data import DataError
    from .train import TrainError
    from .train.sweep import DEFAULT_BETAS, sweep

    for name in ("resume", "overwrite"):
        if hasattr(args, name):
            print(f"fastvae sweep: error: --{name} does not apply to a sweep: run the same command again and it "
                  "continues where it stopped (finished runs are kept, a stopped one resumes)", file=sys.stderr)
            return 2
    config, explicit = train_config_from_args(args)
    if "beta" in explicit:
        print("fastvae sweep: error: --beta: the sweep sets beta per run; give the betas with --betas",
              file=sys.stderr)
        return 2
    progress = {"bar": True, "plain": False}.get(getattr(args, "progress", "auto"))
    try:
        report = sweep(getattr(args, "betas", DEFAULT_BETAS), config, out=getattr(args, "out", "runs/sweep"),
                       explicit=explicit, n=getattr(args, "eval_n", 2000), progress=progress, log=_log)
    except (TrainError, DataError, ImportError) as exc:
        print(f"fastvae sweep: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastvae sweep: interrupted; run the same command again to continue", file=sys.stderr)
        return 130
    return 0 if "status" not in report else 1


def _run_bench(argv: Sequence[str]) -> int:
    try:
        from . import bench
    except ImportError as exc:
        print(f"fastvae bench: error: the benchmark runner (fastvae.bench) cannot be imported: {exc}",
              file=sys.stderr)
        return 2
    if hasattr(bench, "main"):
        status = bench.main(list(argv))
    elif hasattr(bench, "add_arguments") and hasattr(bench, "run"):
        parser = argparse.ArgumentParser(prog="fastvae bench")
        bench.add_arguments(parser)
        status = bench.run(parser.parse_args(list(argv)))
    else:
        print("fastvae bench: error: fastvae.bench has no main(argv) or add_arguments/run", file=sys.stderr)
        return 2
    return int(status or 0)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``fastvae`` console script; returns the exit status.  (A CPU
    the ``fastvae`` commands wait passively in OpenMP: see :mod:`fastvae._openmp`.)"""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        # bench parses its own options (its parser is defined next to the benchmarks).
        return _run_bench(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "sample":
        return _run_sample(args)
    if args.command == "eval":
        return _run_eval(args)
    if args.command == "sweep":
        return _run_sweep(args)
    return _run_train(args)


if __name__ == "__main__":
    sys.exit(main())
