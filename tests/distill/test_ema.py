"""train.ema: the weight average is scored every epoch, chosen when better, saved in last.pt and resumed."""

import torch
from torch import nn

from edgekd.config import TrainConfig
from edgekd.distill import trainer
from edgekd.distill.ema import WeightAverage
from edgekd.distill.losses import cross_entropy
from edgekd.distill.trainer import evaluate, train


def _data(n=64):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 1, 4, 4, generator=g)
    return x, (x.flatten(1)[:, 0] > 0).long()


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))


def test_the_average_follows_timm_warmup_and_averages_buffers_too():
    model = _model()
    average = WeightAverage(model, decay=0.9)
    with torch.no_grad():
        model[1].weight.add_(1.0)
        model[2].running_mean.fill_(2.0)
    average.update(model, step=1)  # timm: decay 0 at the first step, the average becomes the model
    assert torch.equal(average.module[1].weight, model[1].weight)
    before = average.module[1].weight.clone()
    with torch.no_grad():
        model[1].weight.add_(1.0)
    average.update(model, step=100_000)  # warm-up over: decay capped at 0.9
    assert torch.allclose(average.module[1].weight, 0.9 * before + 0.1 * model[1].weight)
    assert torch.allclose(average.module[2].running_mean, torch.full((8,), 2.0))


class _Loop:  # what _record reads
    def __init__(self):
        self.model, self.average = _model(), WeightAverage(_model(), 0.99)
        with torch.no_grad():
            self.average.module[1].weight.fill_(0.5)


def test_selection_takes_the_better_of_model_and_average_per_epoch():
    loop, state = _Loop(), trainer._fresh_state()
    trainer._record(state, {"val_accuracy": 0.6, "val_accuracy_ema": 0.7}, loop, 0)
    assert (state["best_weights"], state["best_accuracy"], state["best_epoch"]) == ("ema", 0.7, 1)
    assert torch.equal(state["best_state"]["1.weight"], torch.full((8, 16), 0.5))  # the average's weights
    trainer._record(state, {"val_accuracy": 0.8, "val_accuracy_ema": 0.8}, loop, 1)  # a tie goes to the model
    assert (state["best_weights"], state["best_epoch"]) == ("model", 2)
    assert torch.equal(state["best_state"]["1.weight"], loop.model[1].weight)
    trainer._record(state, {"val_accuracy": 0.5, "val_accuracy_ema": 0.75}, loop, 2)  # no better than 0.8
    assert state["best_epoch"] == 2 and state["bad_epochs"] == 1


def test_trained_checkpoint_holds_what_was_scored_and_last_pt_the_average(tmp_path, single_thread):
    x, y = _data()
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05, ema=True, ema_decay=0.9, channels_last=False)
    model = _model()
    result = train(model, (x, y), (x, y), cfg, cross_entropy(), tmp_path, key="k")
    assert all("val_accuracy_ema" in row for row in result.history)
    best_row = result.history[result.best_epoch - 1]
    column = "val_accuracy_ema" if result.best_weights == "ema" else "val_accuracy"
    assert result.best_accuracy == best_row[column] == max(max(r["val_accuracy"], r["val_accuracy_ema"])
                                                           for r in result.history)
    scored = _model()
    scored.load_state_dict(result.best_state)
    assert evaluate(scored, x, y) == result.best_accuracy  # the kept weights are the ones that scored it
    last = torch.load(tmp_path / "last.pt", weights_only=False)
    assert set(last["ema"]) == {f"module.{k}" for k in model.state_dict()}


def test_a_resumed_run_averages_exactly_as_the_uninterrupted_one(tmp_path, single_thread):
    x, y = _data()
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05, ema=True, ema_decay=0.9, channels_last=False)
    whole = train(_model(), (x, y), (x, y), cfg, cross_entropy(), tmp_path / "a", key="k")

    class Stop(Exception):
        pass

    def stop_after_two(**_):  # progress is called once per epoch, after last.pt is written
        stop_after_two.calls = getattr(stop_after_two, "calls", 0) + 1
        if stop_after_two.calls == 2:
            raise Stop

    try:
        train(_model(), (x, y), (x, y), cfg, cross_entropy(), tmp_path / "b", key="k", progress=stop_after_two)
    except Stop:
        pass
    resumed = train(_model(), (x, y), (x, y), cfg, cross_entropy(), tmp_path / "b", key="k")
    assert resumed.resumed_from_epoch == 2
    assert [r["val_accuracy_ema"] for r in resumed.history] == [r["val_accuracy_ema"] for r in whole.history]
    for k, v in whole.best_state.items():
        assert torch.equal(v, resumed.best_state[k]), k
