"""The table of beta-schedule kinds: the one place that names them.

Each :class:`Kind` says which class a name builds, which keyword arguments
:func:`make_beta_schedule` takes for it, how the options of ``fastvae train`` map to those
arguments, and how a run of that kind is described in the command's banner and in its plots'
titles.  ``fastvae train``'s ``--beta-schedule`` choices and help, its checks, its banner and
its report all read this table.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

from .base import Schedule
from .constrained import ConstrainedBeta
from .open_loop import CapacityRamp, ConstantBeta, CyclicalBeta, LinearWarmup

__all__ = ["Kind", "KINDS", "BETA_SCHEDULE_KINDS", "make_beta_schedule", "make_capacity_schedule",
           "default_kind", "kind_help"]

Number = Union[int, float]


@dataclass(frozen=True)
class Kind:
    """One kind of beta schedule.

    ``options``, ``banner`` and ``title`` take a ``fastvae train`` config as a mapping (the
    ``config`` of a checkpoint or of ``metrics.json``).
    """

    name: str
    schedule: type
    #: One phrase for ``fastvae train --help``.
    help: str
    #: ``fastvae train``'s config -> the arguments of :func:`make_beta_schedule` (``device`` is added).
    options: Callable[[Mapping[str, Any]], Dict[str, Any]]
    #: What the banner of ``fastvae train`` says after "beta".
    banner: Callable[[Mapping[str, Any]], str]
    #: What the titles of the run's plots say about beta.
    title: Callable[[Mapping[str, Any]], str]
    #: Arguments :func:`make_beta_schedule` takes besides the class's hyper-parameters.
    extra_arguments: Tuple[str, ...] = ()
    #: ``{alias: argument}`` accepted by :func:`make_beta_schedule`.
    aliases: Dict[str, str] = field(default_factory=dict)
    #: The argument that must be given.
    required: Optional[str] = None

    @property
    def arguments(self) -> Tuple[str, ...]:
        return tuple(self.schedule._config) + self.extra_arguments


def _warmup_title(c: Mapping[str, Any]) -> str:
    if not c.get("warmup_steps"):
        return f"beta {c.get('beta', 0.0):g}"
    return f"beta {c.get('beta_start', 0.0):g}->{c.get('beta', 0.0):g} over {c.get('warmup_steps')} steps"


def _constrained_warmup(c: Mapping[str, Any]) -> int:
    return int(c.get("warmup_steps") or 0) if c.get("constrained_warmup") else 0


def _constrained_options(c: Mapping[str, Any]) -> Dict[str, Any]:
    # Entries a config of the first version lacks take the values of its update (no warm-up, the
    # error in nats, no bound on the step).
    return dict(target_rate=c["target_rate"], init_beta=c["beta"], lr=c["beta_lr"], alpha=c["beta_alpha"],
                error=c.get("beta_error") or "nats", max_step=c.get("beta_max_step"),
                warmup_steps=_constrained_warmup(c))


def _constrained_banner(c: Mapping[str, Any]) -> str:
    warmup = _constrained_warmup(c)
    start = f"beta 0->{c['beta']:g} over {warmup} steps, then" if warmup else f"initial beta {c['beta']:g},"
    error = "log(rate / target)" if c.get("beta_error") == "log_ratio" else "rate - target (nats)"
    bound = f", step <= {c['beta_max_step']:g}" if c.get("beta_max_step") else ""
    return (f"constrained (target rate {c['target_rate']:g} nats; {start} dual ascent on log(beta) by "
            f"{c['beta_lr']:g} x {error}{bound})")


KINDS: Dict[str, Kind] = {k.name: k for k in (
    Kind("constant", ConstantBeta, help="constant",
         options=lambda c: dict(beta=c["beta"]),
         banner=lambda c: f"{c['beta']:g}",
         title=lambda c: f"beta {c.get('beta', 0.0):g}"),
    Kind("warmup", LinearWarmup, help="warmup (linear from --beta-start)",
         options=lambda c: dict(beta=c["beta"], warmup_steps=c["warmup_steps"], start=c["beta_start"]),
         banner=lambda c: f"{c['beta']:g} (warm-up from {c['beta_start']:g} over {c['warmup_steps']} steps)",
         title=_warmup_title),
    Kind("cyclical", CyclicalBeta, help="cyclical (Fu et al. 2019)",
         options=lambda c: dict(beta=c["beta"], cycle_steps=c["cycle_steps"], ratio=c["cycle_ratio"],
                                n_cycles=c["n_cycles"]),
         banner=lambda c: f"{c['beta']:g} (cyclical, {c['cycle_steps']}-step cycles)",
         title=lambda c: f"cyclical beta up to {c.get('beta', 0.0):g}"),
    Kind("constrained", ConstrainedBeta, help="constrained (dual ascent to --target-rate)",
         options=_constrained_options, banner=_constrained_banner,
         title=lambda c: f"constrained beta (target rate {c.get('target_rate'):g} nats)",
         extra_arguments=("device", "error", "max_step", "warmup_steps"),
         aliases={"delta": "target_rate", "beta": "init_beta"},
         required="target_rate"),
)}

#: The kind names, in the order of the table.
BETA_SCHEDULE_KINDS = tuple(KINDS)


def default_kind(beta_schedule: Optional[str], target_rate: Optional[float]) -> str:
    """The kind ``fastvae train`` uses: ``beta_schedule`` when given, else 'constrained' when a
    target rate is given, else 'warmup'."""
    if beta_schedule is not None:
        return beta_schedule
    return "constrained" if target_rate is not None else "warmup"


def kind_help() -> str:
    """The kinds as ``fastvae train --help`` lists them: "a, b, c or d"."""
    phrases = [k.help for k in KINDS.values()]
    return ", ".join(phrases[:-1]) + " or " + phrases[-1]


def make_beta_schedule(kind: str = "constant", **kwargs: Any) -> Schedule:
    """Build a beta schedule from its name and keyword arguments (for the command line).

    ============== ============================ ===================================================
    kind           class                        arguments
    ============== ============================ ===================================================
    'constant'     :class:`ConstantBeta`        beta
    'warmup'       :class:`LinearWarmup`        beta, warmup_steps, start
    'cyclical'     :class:`CyclicalBeta`        beta, cycle_steps, ratio, n_cycles
    'constrained'  :class:`ConstrainedBeta`     target_rate (alias delta), init_beta (alias beta),
                                                lr, alpha, beta_min, beta_max, device
    ============== ============================ ===================================================

    ``kind`` is case-insensitive.  Arguments whose value is ``None`` count as not given (so a
    command line can pass all of its options); any other argument the kind does not take is a
    ValueError, as is an unknown kind or an invalid value (the message names the argument).
    """
    entry = KINDS.get(kind.strip().lower()) if isinstance(kind, str) else None
    if entry is None:
        raise ValueError(f"kind must be one of {BETA_SCHEDULE_KINDS}, got {kind!r}")
    args = {k: v for k, v in kwargs.items() if v is not None}
    for alias, name in entry.aliases.items():
        if alias in args:
            if name in args:
                raise ValueError(f"give either {name} or its alias {alias}, not both")
            args[name] = args.pop(alias)
    if entry.required is not None and entry.required not in args:
        aliases = [a for a, n in entry.aliases.items() if n == entry.required]
        named = entry.required + (f" ({', '.join(aliases)})" if aliases else "")
        raise ValueError(f"{named} is required for kind {entry.name!r}")
    unexpected = sorted(set(args) - set(entry.arguments))
    if unexpected:
        raise ValueError(
            f"unexpected argument(s) {unexpected} for kind {entry.name!r}; it takes {list(entry.arguments)}"
        )
    return entry.schedule(**args)


def make_capacity_schedule(
    max_capacity: Optional[Number] = None, ramp_steps: Optional[int] = None, start: Optional[Number] = None
) -> Optional[CapacityRamp]:
    """A :class:`CapacityRamp`, or ``None`` (no capacity term) when ``max_capacity`` is None.

    ``ramp_steps`` defaults to 0 (C = max_capacity from the start) and ``start`` to 0.
    """
    if max_capacity is None:
        if ramp_steps is not None or start is not None:
            raise ValueError("max_capacity is required when ramp_steps or start is given")
        return None
    return CapacityRamp(
        max_capacity=max_capacity,
        ramp_steps=0 if ramp_steps is None else ramp_steps,
        start=0.0 if start is None else start,
    )
