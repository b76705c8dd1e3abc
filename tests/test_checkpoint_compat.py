"""Checkpoints written by earlier versions of the trainer still resume, and train on as that
version did (tests/data/make_checkpoints.py wrote them, and what that version made of them
resumed to step 6)."""
import importlib.util
import os
import shutil

import pytest
import torch

from fastvae.train import TrainConfig, load_checkpoint, train

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
_spec = importlib.util.spec_from_file_location("make_checkpoints", os.path.join(DATA, "make_checkpoints.py"))
make = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make)


pytestmark = pytest.mark.usefixtures("single_process_torch")


def without_timings(entries):
    return [{k: v for k, v in e.items() if k not in ("samples_per_s", "time_s")} for e in entries]


@pytest.mark.parametrize("name", sorted(make.RUNS))
def test_a_checkpoint_of_the_first_trainer_resumes_and_trains_on_alike(tmp_path, name):
    run = tmp_path / name
    shutil.copytree(os.path.join(DATA, name), run)
    reference = torch.load(run / f"resumed-{make.RESUMED_STEPS}.pt", weights_only=True)
    old = load_checkpoint(str(run))
    assert old["step"] == make.STEPS and old["format"] == "fastvae-train-checkpoint/1"

    result = train(TrainConfig(steps=make.RESUMED_STEPS), resume=str(run), explicit={"steps"}, dataset=make.data(),
                   progress=False, log=lambda *_: None)
    assert result.status == "finished" and result.step == make.RESUMED_STEPS == reference["step"]
    new = load_checkpoint(str(run))
    for key, value in old["config"].items():  # the checkpoint's config, the budget aside
        if key not in ("steps", "time_limit"):
            assert new["config"][key] == value, key
    assert new["beta_schedule"].keys() == reference["beta_schedule"].keys()
    assert new["beta_schedule"]["t"] == reference["beta_schedule"]["t"] == make.RESUMED_STEPS
    assert new["capacity_schedule"] == reference["capacity_schedule"]
    # The same training on this machine; elsewhere float rounding may differ a little.
    for key, value in reference["model"].items():
        torch.testing.assert_close(new["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    got = without_timings(new["metrics"]["history"])
    assert [h["step"] for h in got] == [h["step"] for h in reference["history"]]
    for a, b in zip(got, reference["history"]):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (key, a, b)
