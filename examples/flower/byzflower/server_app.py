"""The ServerApp: byzlearn's RobustStrategy, with the simulated coalition's Adversary when an attack is set."""

from __future__ import annotations

import json
from pathlib import Path

from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from byzlearn.flower import Adversary, RobustStrategy

from .task import accuracy, make_model, test_data

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    n, f = int(cfg["num-clients"]), int(cfg["f"])
    pre = [p.strip() for p in str(cfg["pre"]).split(",") if p.strip()]
    attack = str(cfg["attack"])  # a name, or a JSON object of attack keys: '{"name": "ipm", "epsilon": 10.0}'
    spec = json.loads(attack) if attack.lstrip().startswith("{") else attack
    adversary = Adversary(spec, seed=int(cfg["seed"])) if attack != "none" and int(cfg["num-byzantine"]) > 0 else None
    strategy = RobustStrategy(
        {"name": str(cfg["aggregator"]), "pre": pre},
        f=f,
        adversary=adversary,
        fraction_evaluate=0.0,
        min_train_nodes=n,
        min_available_nodes=n,
    )
    x_test, y_test = test_data()
    history: list[dict[str, float]] = []

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model = make_model()
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, acc = accuracy(model, x_test, y_test)
        history.append({"round": server_round, "test_loss": loss, "test_accuracy": acc})
        return MetricRecord({"test_loss": loss, "test_accuracy": acc})

    strategy.start(
        grid=grid, initial_arrays=ArrayRecord(make_model().state_dict()), num_rounds=int(cfg["num-server-rounds"]), evaluate_fn=evaluate
    )
    if str(cfg["results"]):
        out = {"config": dict(cfg), "history": history, "counters": strategy.counters}
        Path(str(cfg["results"])).write_text(json.dumps(out, indent=1))
