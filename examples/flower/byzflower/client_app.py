"""The ClientApp: honest local training; partitions below ``num-byzantine`` enrolled in the coalition."""

from __future__ import annotations

import torch
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from byzlearn.flower import byzantine_mod, poisoned_labels

from .task import client_data, make_model, train


def _byzantine(context: Context) -> bool:
    return int(context.node_config["partition-id"]) < int(context.run_config["num-byzantine"])


def _shard(context: Context) -> tuple[torch.Tensor, torch.Tensor]:
    """This node's data, kept in the node's state after the first round (Flower starts a fresh process per message)."""
    if "shard" not in context.state.array_records:
        x, y = client_data(
            int(context.node_config["partition-id"]), int(context.node_config["num-partitions"]), int(context.run_config["seed"])
        )
        context.state["shard"] = ArrayRecord({"x": Array(x.numpy()), "y": Array(y.numpy())})
    shard = context.state.array_records["shard"]
    return torch.from_numpy(shard["x"].numpy()), torch.from_numpy(shard["y"].numpy())


app = ClientApp(mods=[byzantine_mod(_byzantine)])


@app.train()
def fit(msg: Message, context: Context) -> Message:
    cfg, part = context.run_config, int(context.node_config["partition-id"])
    x, y = _shard(context)
    y = poisoned_labels(msg, y, 10)  # the true labels unless a data-poisoning attack enrolled this node
    model = make_model()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    server_round = int(msg.content["config"]["server-round"])
    loss = train(model, x, y, int(cfg["local-steps"]), int(cfg["batch-size"]), float(cfg["lr"]), seed=1000 * server_round + part)
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord({"num-examples": len(y), "train_loss": loss})})
    return Message(content=content, reply_to=msg)
