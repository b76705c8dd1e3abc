"""Shared fixtures of the test suite.

The Triton kernels are tested on CPU tensors through the Triton interpreter, so TRITON_INTERPRET
must be set before anything imports triton (triton decides interpreted vs compiled when a kernel
is decorated).  On a machine with CUDA the kernels run compiled on the GPU instead (the 'cuda'
backend); set FASTVAE_TEST_INTERPRET=1 there to force the interpreter (then the 'cuda' backend
also goes through it).

Backends (the ``backend`` fixture; each test selects one with fastvae.set_backend):
  torch   the PyTorch path on CPU tensors
  triton  the Triton kernels in the interpreter on CPU tensors (slow: small shapes only)
  tiles   the same with the launchers forced to tiny tiles, several column splits and a short
          persistent grid (``fastvae.ops._backend.small_tiles``), so the column-split, column-loop,
          Philox-offset and persistent-loop paths of every kernel run on small inputs
  cuda    the Triton kernels on CUDA tensors (only when torch.cuda.is_available())

Hypothesis profiles: 'default' (deadline=None, 50 examples, INTERPRETER_EXAMPLES times that in
the interpreter, and TILES_EXAMPLES times that again on 'tiles') and 'ci-long' (200 examples);
pick one with HYPOTHESIS_PROFILE.
"""
import os

import torch  # importing torch does not import triton

HAS_CUDA = torch.cuda.is_available()
if os.environ.get("FASTVAE_TEST_INTERPRET", "0" if HAS_CUDA else "1") == "1":
    os.environ["TRITON_INTERPRET"] = "1"
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# share of the profile's max_examples that property tests run in the (slow) interpreter
INTERPRETER_EXAMPLES = 1.0
# 'tiles' is there to reach the kernels' split, loop and offset paths, which tiny tiles reach on
# almost every example (the values themselves are 'triton''s to check): a third of the examples,
# which is half the suite's time on a 2-core machine otherwise
TILES_EXAMPLES = 0.3

import dataclasses  # noqa: E402

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "default",
    deadline=None,
    max_examples=50,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "ci-long",
    deadline=None,
    max_examples=200,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@dataclasses.dataclass(frozen=True)
class Backend:
    name: str        # 'torch', 'triton' (interpreter), 'tiles' (interpreter, tiny tiles) or 'cuda'
    env: str         # the fastvae.set_backend value
    device: str      # where the test tensors live
    max_elems: int   # largest tensor a property test may draw
    slow: bool       # the Triton interpreter: keep examples few and small

    @property
    def triton(self) -> bool:
        return self.name != "torch"

    def examples(self, scale: float = 1.0) -> int:
        """max_examples for a property test on this backend under the active profile."""
        base = settings().max_examples * scale
        if self.slow:
            base *= INTERPRETER_EXAMPLES
        if self.name == "tiles":
            base *= TILES_EXAMPLES
        return max(2, int(base))

    def settings(self, scale: float = 1.0, **kw):
        return settings(settings(), max_examples=self.examples(scale), **kw)


BACKENDS = {
    "torch": Backend("torch", "torch", "cpu", 60_000, False),
    "triton": Backend("triton", "triton", "cpu", 2_000, True),
    "tiles": Backend("tiles", "triton", "cpu", 600, True),
    "cuda": Backend("cuda", "triton", "cuda", 200_000, False),
}


def _backend_params():
    params = [pytest.param("torch", id="torch")]
    for name in ("triton", "tiles"):
        params.append(pytest.param(name, id=name, marks=pytest.mark.skipif(
            not INTERPRET, reason="TRITON_INTERPRET is off (set FASTVAE_TEST_INTERPRET=1)")))
    if HAS_CUDA:
        params.append(pytest.param("cuda", id="cuda", marks=pytest.mark.cuda))
    return params


BACKEND_PARAMS = _backend_params()


def _selected(spec: Backend):
    """Run the test with ``spec``'s backend (fastvae.set_backend), restored afterwards."""
    import contextlib

    import fastvae
    from fastvae.ops import _backend

    with fastvae.set_backend(spec.env), (_backend.small_tiles() if spec.name == "tiles" else contextlib.nullcontext()):
        yield spec


@pytest.fixture(params=BACKEND_PARAMS)
def backend(request):
    """Every backend available here, selected for this test with fastvae.set_backend."""
    yield from _selected(BACKENDS[request.param])


@pytest.fixture(params=[p for p in BACKEND_PARAMS if p.values[0] in ("torch", "triton", "tiles")])
def cpu_backend(request):
    """The CPU backends: the torch path and the Triton kernels in the interpreter (normal and tiny tiles)."""
    yield from _selected(BACKENDS[request.param])


@pytest.fixture
def torch_backend():
    yield from _selected(BACKENDS["torch"])


@pytest.fixture
def triton_backend():
    """The Triton kernels on CPU tensors in the interpreter (skipped when it is off)."""
    if not INTERPRET:
        pytest.skip("TRITON_INTERPRET is off")
    yield from _selected(BACKENDS["triton"])


@pytest.fixture
def use_backend():
    """``use_backend(name)``: switch this test to a backend by name (restored at the end)."""
    import fastvae

    previous = fastvae.get_backend()

    def switch(name: str) -> None:
        fastvae.set_backend(name)

    yield switch
    fastvae.set_backend(previous)


@pytest.fixture
def kernel_launches(monkeypatch):
    """A list that records the name of every Triton kernel launched in the interpreter."""
    if not INTERPRET:
        pytest.skip("kernel launches are only observable in the interpreter")
    from triton.runtime import interpreter

    launched = []
    original = interpreter.GridExecutor.__call__

    def counting(self, *args, **kwargs):
        launched.append(getattr(self.fn, "__name__", repr(self.fn)))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(interpreter.GridExecutor, "__call__", counting)
    return launched


@pytest.fixture
def single_process_torch(monkeypatch):
    """A training test's process: the PyTorch path, no torchrun variables, one thread (on a shared machine
    spinning OpenMP threads make tiny steps many times slower); the thread count is restored after."""
    monkeypatch.setenv("FASTVAE_BACKEND", "torch")
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
