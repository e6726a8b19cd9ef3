"""medge.edge.execution.run's parts: the record of a prediction, the pool of nets, the stage costs of a run.

The strategies themselves (in turn, one batch, pipelined) run through ``Model.predict`` in tests/edge/test_model.py
and tests/edge/execution/test_budget.py.
"""
import pytest

from medge.edge.execution.budget import StageCosts
from medge.edge.execution.run import NetPool, Prediction, RunCosts


def test_a_prediction_is_ok_without_an_error_and_its_record_has_the_one_format():
    p = Prediction("a.png", label="normal", probabilities={"normal": 0.9, "disease": 0.1}, logits=[2.0, -0.2],
                   threshold=0.3, calibrated=True, timings_ms={"read": 1.0}, warnings=["dark"], input={"format": "png"})
    record = p.to_record("abc123")
    assert p.ok and record == {"path": "a.png", "label": "normal", "probabilities": {"normal": 0.9, "disease": 0.1},
                               "threshold": 0.3, "calibrated": True, "logits": [2.0, -0.2], "model_sha256": "abc123",
                               "runtime": None, "timings_ms": {"read": 1.0}, "error": None, "warnings": ["dark"],
                               "input": {"format": "png"}}
    record["warnings"].append("changed")
    assert p.warnings == ["dark"]  # the record holds a copy
    failed = Prediction(None, error="truncated PNG")
    assert not failed.ok and failed.to_record("abc123")["label"] is None


def test_the_pool_lends_a_net_to_one_thread_at_a_time_and_keeps_it():
    pool, made = NetPool(), []

    def load():
        made.append(object())
        return made[-1]

    with pool.borrow(load) as first:
        with pool.borrow(load) as second:  # the first is out: a new one
            assert second is not first
        assert len(pool) == 1
    assert len(pool) == 2 and len(made) == 2
    with pool.borrow(load) as again:
        assert again in made  # given back, lent again: no third net
    assert len(made) == 2


def test_a_net_is_given_back_when_its_pass_fails():
    pool = NetPool()
    with pytest.raises(RuntimeError, match="forward failed"):
        with pool.borrow(lambda: "net"):
            raise RuntimeError("forward failed")
    assert len(pool) == 1


def test_costs_are_measured_only_after_enough_images_of_each_stage():
    costs = RunCosts()
    for _ in range(RunCosts.MIN_IMAGES):
        costs.add_decode(3.0)
    costs.add_forward(20.0, images=RunCosts.MIN_IMAGES - 1)
    assert costs.measured() is None  # too few images through the forward pass
    costs.add_forward(12.0, images=1)
    assert costs.measured() == StageCosts(3.0, 8.0)  # ms per image of each stage

