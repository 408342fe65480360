"""The coordinatewise recurrent networks behind the learned aggregators.

Every coordinate i of the model is one element of the batch: the same weights process all d
coordinates, each with its own recurrent state, which persists across rounds.

``encoder = "concat"`` is the paper's network (Ji et al., IJCAI 2019, §4.2-4.3; 2 layers of 20
LSTM or GRU units, a linear head): the input of coordinate i is the M workers' normalised values
in a fixed worker order, followed for ARNN by the M workers' loss features, so it is tied to M.

``encoder = "set"`` is ours (not in the paper): each worker's (value, loss feature) pair goes
through a shared embedding; the embeddings are pooled over workers by their mean and by a softmax
attention over workers, which also pools the workers' values themselves (``x_att``). The pooled
vector feeds the same recurrent stack, and the output is ``(1 + gain(h)) * x_att + head(h) * s_att``:
a learned, state-dependent multiple of an attention-weighted average of the workers plus a
correction on the scale of their attention-weighted RMS ``s_att``. The attention logits also get a
direct linear path from the loss features. It is
invariant to the order of the workers and serves any number of them. The linear path through
``x_att`` matters under large forged vectors: the scale ``A_i`` is then set by the attackers and the
honest values are tiny after normalisation (1e-6 of it, say), which a tanh/sigmoid stack cannot
return at that precision, while an attention weight near 0 removes the forged rows exactly. Near 0
is not 0: a softmax leaves ~1e-4 on a row it rejects, enough for a row 1e5 times the honest scale
to steer the step, hence the ARNN's ``input_clip`` (``learned_update``), which bounds every row's
norm first. It starts as the plain mean (uniform attention, gain 1, head 0).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

Cell = Literal["lstm", "gru"]
Encoder = Literal["concat", "set"]
State = list[Tensor]
# A forged row can be 1e4 times larger than the honest ones after normalisation; removing it from the
# attention-weighted average needs logit gaps of ~15, which the loss-feature path (scaled by this
# default of ``loss_logit_scale``) reaches with weights of order 1.
LOSS_LOGIT_SCALE = 20.0


class CoordinatewiseRNN(nn.Module):
    """``forward(X, loss_feat, state) -> (o, state)``: ``X: Tensor[d, M, k]`` -> ``o: Tensor[d]``.

    ``workers``: M for the ``concat`` encoder (ignored by ``set``); ``features``: k values per
    worker and coordinate (1, or 3 with the L2L encoding); ``loss_info``: ARNN (one loss feature per
    worker, shared by all coordinates, ``loss_feat: Tensor[M]``); ``loss_memory`` (ours): also a
    running mean of each worker's loss feature over the rounds (``loss_feat: Tensor[M, 2]``), a
    reputation that a permutation-invariant encoder cannot otherwise keep.
    """

    def __init__(
        self,
        cell: Cell = "lstm",
        encoder: Encoder = "concat",
        workers: int = 10,
        features: int = 1,
        loss_info: bool = False,
        hidden: int = 20,
        layers: int = 2,
        embed: int = 16,
        loss_memory: bool = False,
        loss_logit_scale: float = LOSS_LOGIT_SCALE,
        memory_decay: float = 0.9,
    ):
        super().__init__()
        if cell not in ("lstm", "gru"):
            raise ValueError(f"cell must be 'lstm' or 'gru', got {cell!r}")
        if encoder not in ("concat", "set"):
            raise ValueError(f"encoder must be 'concat' or 'set', got {encoder!r}")
        self.cell, self.encoder, self.workers, self.features = cell, encoder, workers, features
        self.loss_info, self.hidden, self.layers, self.embed = loss_info, hidden, layers, embed
        self.loss_memory = loss_info and loss_memory
        self.loss_logit_scale, self.memory_decay = float(loss_logit_scale), float(memory_decay)
        per_worker = features + int(loss_info) + int(self.loss_memory)
        if encoder == "concat":
            in_size = workers * per_worker
        else:
            self.embedding = nn.Linear(per_worker, embed)
            self.score = nn.Linear(embed, 1)
            # a direct path from the loss features to the attention logits (a skip around the embedding)
            self.score_loss = nn.Linear(per_worker - features, 1, bias=False) if loss_info else None
            in_size = 2 * embed + 1
            self.gain = nn.Linear(hidden, 1)
        Cell_ = nn.LSTMCell if cell == "lstm" else nn.GRUCell
        self.cells = nn.ModuleList([Cell_(in_size if i == 0 else hidden, hidden) for i in range(layers)])
        self.head = nn.Linear(hidden, 1)
        if encoder == "set":  # start as the mean: uniform attention, gain 1, no correction
            for lin in (self.score, self.gain, self.head, self.score_loss):
                if lin is not None:
                    nn.init.zeros_(lin.weight)
                    if lin.bias is not None:
                        nn.init.zeros_(lin.bias)

    def hyperparameters(self) -> dict:
        keys = (
            "cell",
            "encoder",
            "workers",
            "features",
            "loss_info",
            "hidden",
            "layers",
            "embed",
            "loss_memory",
            "loss_logit_scale",
            "memory_decay",
        )
        return {k: getattr(self, k) for k in keys}

    @property
    def recurrent_tensors(self) -> int:
        """How many ``[d, hidden]`` tensors the recurrent state holds (h and c per LSTM layer, h per GRU layer)."""
        return self.layers * (2 if self.cell == "lstm" else 1)

    def initial_state(self, d: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> State:
        return [torch.zeros(d, self.hidden, device=device, dtype=dtype) for _ in range(self.recurrent_tensors)]

    def encode(self, X: Tensor, loss_feat: Tensor | None) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """The recurrent stack's input ``[d, in]`` and, for ``set``, the attention-weighted mean and RMS
        of the workers' normalised values (``[d]`` each)."""
        d, M, k = X.shape
        if k != self.features:
            raise ValueError(f"the network takes {self.features} feature(s) per worker, got {k}")
        if self.loss_info:
            if loss_feat is None:
                raise ValueError("this aggregator reads each worker's public-batch loss (ARNN); none given")
            q = loss_feat.reshape(M, -1).shape[1]
            X = torch.cat([X, loss_feat.to(X.dtype).reshape(1, M, q).expand(d, M, q)], dim=-1)
        if self.encoder == "concat":
            if M != self.workers:
                raise ValueError(
                    f"this aggregator was trained for {self.workers} workers and got {M}; "
                    "use the permutation-invariant variant (encoder = 'set') for a varying number"
                )
            return X.reshape(d, -1), None
        e = torch.tanh(self.embedding(X))  # [d, M, E]
        logits = self.score(e).squeeze(-1)
        if self.score_loss is not None:
            # same for every coordinate; scaled so that Adam's steps reach decisive logits in few meta-steps
            logits = logits + self.loss_logit_scale * self.score_loss(X[0, :, self.features :]).squeeze(-1)
        w = torch.softmax(logits, dim=1)  # [d, M], attention over workers
        x_att = (w * X[..., 0]).sum(1)  # [d]: attention-weighted average of the normalised values
        s_att = (w * X[..., 0].square()).sum(1).sqrt()  # [d]: attention-weighted RMS, the scale of the correction
        return torch.cat([e.mean(1), (w.unsqueeze(-1) * e).sum(1), x_att.unsqueeze(1)], dim=1), (x_att, s_att)

    def forward(self, X: Tensor, loss_feat: Tensor | None, state: State) -> tuple[Tensor, State]:
        z, pooled = self.encode(X, loss_feat)
        new: State = []
        for i, cell in enumerate(self.cells):
            if self.cell == "lstm":
                h, c = cell(z, (state[2 * i], state[2 * i + 1]))
                new += [h, c]
            else:
                h = cell(z, state[i])
                new.append(h)
            z = h
        out = self.head(z).squeeze(-1)
        if pooled is not None:  # set: everything is proportional to the attended workers' values
            x_att, s_att = pooled
            out = (1.0 + self.gain(z).squeeze(-1)) * x_att + out * s_att
        return out, new
