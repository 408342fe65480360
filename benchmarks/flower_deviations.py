"""The deviations of ``flower_compare.py``, each demonstrated: numpy re-implementations written from the spec (squared
distances, Krum scores, Bulyan's one-pass and iterative selections and its step 2, an iterative ``selection_rule`` for
Flower's ``Bulyan``) and the experiments built on them: Bulyan's selection (``explain_bulyan``), Krum at n <= 2f + 2,
float32 cancellation in Flower's distances, Multi-Krum's ``num-examples`` weighting, the cost of a full ``gc.collect()``
and the replies Flower's aggregation empties.
"""

from __future__ import annotations

import gc
import statistics
import time

import numpy as np
from flwr.app import RecordDict
from flwr.serverapp.strategy import Bulyan, FedMedian, FedTrimmedAvg, Krum, MultiKrum

from flower_common import HONEST_STD, FlowerLog, Replies, byzlearn_step, compare, dim, make_rows, run_byzlearn, run_flower


# ---------------------------------------------------------------------------------------------- numpy references (from the spec)
def sq_dists(X: np.ndarray) -> np.ndarray:
    """Exact-enough squared distances: float64, rows centred at their mean before the Gram product."""
    Y = X.astype(np.float64)
    Y = Y - Y.mean(axis=0)
    nr = np.einsum("ij,ij->i", Y, Y)
    D = np.maximum(nr[:, None] + nr[None, :] - 2.0 * (Y @ Y.T), 0.0)
    np.fill_diagonal(D, 0.0)
    return D


def krum_scores(D: np.ndarray, f: int, alive: np.ndarray) -> np.ndarray:
    """Sum of the ``max(1, r - f - 2)`` smallest distances to the other alive rows (``inf`` for dead rows)."""
    idx = np.flatnonzero(alive)
    k = max(1, len(idx) - f - 2)
    scores = np.full(len(D), np.inf)
    for i in idx:
        others = np.sort(D[i, idx[idx != i]])
        scores[i] = others[:k].sum()
    return scores


def select_one_pass(D: np.ndarray, f: int, theta: int) -> list[int]:
    """Flower's Bulyan selection: the theta lowest Krum scores, all computed once on the n replies."""
    return [int(i) for i in np.argsort(krum_scores(D, f, np.ones(len(D), bool)), kind="stable")[:theta]]


def select_iterative(D: np.ndarray, f: int, theta: int) -> list[int]:
    """The paper's Bulyan selection: Krum on the remaining rows, the pick removed, theta times."""
    alive, picks = np.ones(len(D), bool), []
    for _ in range(theta):
        i = int(np.argmin(krum_scores(D, f, alive)))
        picks.append(i)
        alive[i] = False
    return picks


def bulyan_step2(S: np.ndarray, f: int) -> tuple[np.ndarray, np.ndarray]:
    """Per coordinate, the mean (in S's dtype) of the beta = theta - 2f picked values closest to their median.

    Equally close values: the smaller first (values sorted, then a stable sort by distance). Also returns the
    coordinates where the beta-th and (beta+1)-th closest values are exactly as close (a tie at the window's edge).
    """
    beta = S.shape[0] - 2 * f
    S = np.sort(S, axis=0)
    med = np.median(S, axis=0)
    dist = np.abs(S - med)
    idx = np.argsort(dist, axis=0, kind="stable")
    ranked = np.take_along_axis(dist, idx, axis=0)
    ties = ranked[beta - 1] == ranked[beta] if beta < S.shape[0] else np.zeros(S.shape[1], bool)
    return np.take_along_axis(S, idx[:beta], axis=0).mean(axis=0), ties


def iterative_selection_rule(contents: list[RecordDict], num_malicious_nodes: int, num_nodes_to_select: int) -> list[RecordDict]:
    """A Flower ``selection_rule`` for ``Bulyan``: the iterative Krum selection (``select_iterative``)."""
    X = np.stack([np.concatenate([a.ravel() for a in c["arrays"].to_numpy_ndarrays()]) for c in contents])
    return [contents[i] for i in select_iterative(sq_dists(X), num_malicious_nodes, num_nodes_to_select)]


def nearest_row(out: np.ndarray, X: np.ndarray) -> int:
    return int(np.argmin(((X.astype(np.float64) - out) ** 2).sum(axis=1)))


def iterative_min_gap(D: np.ndarray, f: int, theta: int) -> tuple[float, int]:
    """The smallest relative gap between the best and the second-best score over the iterative picks, and its step."""
    alive, best = np.ones(len(D), bool), (np.inf, -1)
    for t in range(theta):
        scores = np.sort(krum_scores(D, f, alive))
        best = min(best, ((scores[1] - scores[0]) / scores[0], t))
        alive[int(np.argmin(krum_scores(D, f, alive)))] = False
    return float(best[0]), int(best[1])


def explain_bulyan(X, bad, layout, n, f, replies, msgs, flower_out, byz_out, log) -> dict:
    """Bulyan's two selections against both sides, on these float32 replies and on the same replies in float64."""
    theta = n - 2 * f
    D = sq_dists(X)
    one, it = select_one_pass(D, f, theta), select_iterative(D, f, theta)
    gap, step = iterative_min_gap(D, f, theta)
    (np_one, ties_one), (np_it, ties_it) = bulyan_step2(X[one], f), bulyan_step2(X[it], f)
    honest = X[[i for i in range(n) if i not in bad]].astype(np.float64).mean(axis=0)

    def rms(v):
        return float(np.sqrt(np.mean((v.astype(np.float64) - honest) ** 2)))

    # float64 replies: byzlearn computes in float64 (its compute dtype follows the arrays), so near-ties resolve exactly
    X64 = X.astype(np.float64)
    rep64 = Replies(X64, layout)
    byz64 = run_byzlearn("bulyan", f, rep64, rep64.messages())
    flower_it64, _ = run_flower(lambda: Bulyan(num_malicious_nodes=f, selection_rule=iterative_selection_rule), rep64, log)
    np_it64, ties_it64 = bulyan_step2(X64[it], f)
    out = dict(
        layout=layout,
        n=n,
        f=f,
        theta=theta,
        beta=theta - 2 * f,
        outliers=bad,
        one_pass=sorted(one),
        iterative=sorted(it),
        iterative_order=it,
        only_one_pass=sorted(set(one) - set(it)),
        only_iterative=sorted(set(it) - set(one)),
        outliers_picked_one_pass=sorted(set(one) & set(bad)),
        outliers_picked_iterative=sorted(set(it) & set(bad)),
        iterative_min_relative_gap=gap,
        iterative_min_gap_step=step + 1,
        rms_to_honest_mean=dict(flower=rms(flower_out), byzlearn=rms(byz_out), honest_spread=HONEST_STD),
        byzlearn_vs_flower=compare(byz_out, flower_out),
        flower_vs_numpy_one_pass=compare(flower_out, np_one, ties_one),
        byzlearn_vs_numpy_one_pass=compare(byz_out, np_one),
        byzlearn_vs_numpy_iterative=compare(byz_out, np_it, ties_it),
        float64_byzlearn_vs_numpy_iterative=compare(byz64, np_it64, ties_it64),
        float64_byzlearn_vs_flower_iterative_rule=compare(byz64, flower_it64, ties_it64),
    )
    del rep64, X64
    return out


def krum_small_n(seed: int, log: FlowerLog) -> list[dict]:
    """Flower's Krum at n <= 2f + 2 (f = 2): it runs; byzlearn refuses."""
    out = []
    for n in (4, 5, 6, 7):
        f, d = 2, dim("mlp")
        X, bad = make_rows(d, n, f, np.random.default_rng([seed, n, 1]))
        replies = Replies(X, "mlp")
        ref, _ = run_flower(lambda f=f: Krum(num_malicious_nodes=f), replies, log)
        row = dict(n=n, f=f, outliers=bad, flower_neighbours=max(1, n - f - 2))
        pick = nearest_row(ref, X)
        row.update(flower_pick=pick, flower_pick_is_outlier=pick in bad)
        try:
            mine = run_byzlearn("krum", f, replies, replies.messages())
            row.update(byzlearn_says="(returned an output)", byzlearn_pick=nearest_row(mine, X))
        except ValueError as e:
            row.update(byzlearn_says=str(e), byzlearn_pick=None)
        out.append(row)
    return out


def float32_cancellation(seed: int, log: FlowerLog) -> list[dict]:
    """Krum on models that differ by small updates: Flower's distances |x|^2 + |y|^2 - 2x.y lose the digits."""
    out = []
    n, f, layout = 10, 2, "wide"
    d = dim(layout)
    for scale in (1e-1, 1e-2, 1e-3, 1e-4):
        # honest update scales grow with the index: the exact Krum choice is well separated (the lowest-scale node)
        rng = np.random.default_rng([seed, 7])
        X, bad = make_rows(d, n, f, rng, scales=scale * (1.0 + np.arange(n) / n))
        replies = Replies(X, layout)
        D = sq_dists(X)
        exact = krum_scores(D, f, np.ones(n, bool))
        ref, _ = run_flower(lambda: Krum(num_malicious_nodes=f), replies, log)
        mine = run_byzlearn("krum", f, replies, replies.messages())
        flat = X.astype(np.float32)
        norms = np.square(flat).sum(axis=1)
        Dfl = norms[:, None] + norms[None, :] - 2 * flat @ flat.T  # Flower's compute_distances, float32
        good = np.array([i not in bad for i in range(n)])
        off = ~np.eye(n, dtype=bool) & good[:, None] & good[None, :]  # honest pairs
        rel = float((np.abs(Dfl - D)[off] / D[off]).max())
        fp, bp = nearest_row(ref, X), nearest_row(mine, X)
        out.append(
            dict(
                update_scale=scale,
                outliers=bad,
                exact_pick=int(np.argmin(exact)),
                flower_pick=fp,
                byzlearn_pick=bp,
                flower_pick_exact_rank=int(np.argsort(exact, kind="stable").tolist().index(fp)),
                flower_pick_score_ratio=float(exact[fp] / exact.min()),
                flower_distance_max_rel_error=rel,
                flower_diagonal_max=float(np.abs(np.diag(Dfl)[good]).max()),
                smallest_true_distance=float(D[off].min()),
            )
        )
    return out


def weighted_multikrum(seed: int, log: FlowerLog) -> dict:
    """MultiKrum with unequal num-examples: Flower weights the selected replies, byzlearn does not."""
    n, f, layout = 10, 2, "mlp"
    m = n - f
    X, bad = make_rows(dim(layout), n, f, np.random.default_rng([seed, 11]))
    weights = [10 * (i + 1) for i in range(n)]
    replies = Replies(X, layout, num_examples=weights)
    ref, _ = run_flower(lambda: MultiKrum(num_malicious_nodes=f, num_nodes_to_select=m), replies, log)
    mine = run_byzlearn({"name": "multi_krum", "m": m}, f, replies, replies.messages())
    sel = select_one_pass(sq_dists(X), f, m)
    w = np.array([weights[i] for i in sel], dtype=np.float64)
    weighted = (w[:, None] * X[sel].astype(np.float64)).sum(axis=0) / w.sum()
    plain = X[sel].astype(np.float64).mean(axis=0)
    return dict(
        n=n,
        f=f,
        m=m,
        num_examples=weights,
        selected=sorted(sel),
        byzlearn_vs_flower=compare(mine, ref),
        flower_vs_weighted_mean=compare(ref, weighted),
        byzlearn_vs_plain_mean=compare(mine, plain),
    )


def gc_cost() -> dict:
    """One full ``gc.collect()`` in this process (Flower's Bulyan runs one per selected reply)."""
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        gc.collect()
        times.append(time.perf_counter() - t0)
    return dict(ms=statistics.median(times) * 1e3, tracked_objects=len(gc.get_objects()))


def consumed_replies(seed: int, log: FlowerLog) -> list[dict]:
    """What each strategy leaves in the replies' ArrayRecords after aggregate_train."""
    n, f, layout = 10, 1, "mlp"
    X, _ = make_rows(dim(layout), n, f, np.random.default_rng([seed, 13]))
    replies = Replies(X, layout)
    out = []
    strategies = [
        ("FedMedian", FedMedian),
        ("FedTrimmedAvg", lambda: FedTrimmedAvg(beta=0.1)),
        ("Krum", lambda: Krum(num_malicious_nodes=f)),
        ("MultiKrum", lambda: MultiKrum(num_malicious_nodes=f, num_nodes_to_select=n - f)),
        ("Bulyan", lambda: Bulyan(num_malicious_nodes=f)),
    ]
    for name, make in strategies:
        msgs = replies.messages()
        make().aggregate_train(1, msgs)
        out.append(dict(strategy=name, n=n, emptied=sum(len(m.content["arrays"]) == 0 for m in msgs)))
    msgs = replies.messages()
    byzlearn_step(msgs, "bulyan", f)
    out.append(dict(strategy="byzlearn aggregate_records (bulyan)", n=n, emptied=sum(len(m.content["arrays"]) == 0 for m in msgs)))
    return out
