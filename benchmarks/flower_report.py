"""The report of ``flower_compare.py``: the machine description, number formats, the main table and the Markdown of
``docs/flower-comparison.md`` (``markdown``) with one ``*_section`` function per deviation; it only formats the results
dict that ``flower_compare.main`` builds and computes nothing of its own.
"""

from __future__ import annotations

import os
import platform
import subprocess

from flower_common import HONEST_STD, OUTLIER_SHIFT, OUTLIER_STD, TOL, dim, same


# ---------------------------------------------------------------------------------------------- report
def machine() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Model name")), platform.processor())
    except (OSError, subprocess.CalledProcessError):
        model = platform.processor() or "unknown CPU"
    return f"{model}, {os.cpu_count()} cores, {platform.machine()}"


def fmt_diff(x) -> str:
    return "—" if x is None else ("0" if x == 0 else f"{x:.2g}")


def fmt_ms(x) -> str:
    return "—" if x is None else (f"{x:.1f}" if x >= 10 else f"{x:.2f}")


def table(rows: list[dict]) -> list[str]:
    out = [
        "| rule pair (Flower ↔ byzlearn) | n | f | d | max abs diff | agree? | Flower ms | byzlearn ms | speed-up |",
        "|---|---:|---:|---:|---:|:---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["agree"] is None:
            agree = "both refuse" if "(returned" not in r["flower_says"] + r["byzlearn_says"] else "one refuses"
        else:
            agree = "yes" if r["agree"] else f"**no** ({r['coords_over_tol']:,} coords > tol)"
        f = f"{r['f']}" if r["byzlearn_f"] == r["f"] else f"{r['f']} (byzlearn {r['byzlearn_f']})"
        speed = "—" if r["speedup"] is None else f"{r['speedup']:.1f}x"
        out.append(
            f"| {r['pair']} | {r['n']} | {f} | {r['d']:,} | {fmt_diff(r['max_abs_diff'])} | {agree} | {fmt_ms(r['flower_ms'])} | "
            f"{fmt_ms(r['byzlearn_ms'])} | {speed} |"
        )
    return out


def markdown(res: dict) -> str:
    meta, rows = res["meta"], res["rows"]
    v = meta["versions"]
    L = ["# byzlearn against Flower's built-in robust strategies", ""]
    L += [
        "Produced by",
        "",
        "```",
        meta["command"],
        "```",
        "",
        f"on {meta['machine']} (torch {meta['threads']} threads; a shared machine, 1-minute load average "
        f"{meta['load_average'][0]:g} at the start and {meta['load_average'][1]:g} at the end), {meta['time']}. "
        f"Versions: Python {v['python']}, torch {v['torch']}, numpy {v['numpy']}, flwr {v['flwr']}, byzlearn {v['byzlearn']}. "
        f"Raw numbers: `benchmarks/results-flower-cpu.json`.",
        "",
        "## Setup",
        "",
        "Flower's Message-API strategies (`flwr.serverapp.strategy`) are called as a strategy calls them, "
        "`aggregate_train(server_round, replies)` on the reply `Message`s; byzlearn aggregates the `ArrayRecord`s of the same "
        "replies with `byzlearn.flower.aggregate_records(records, aggregator, f)`. Pairs: `FedMedian()` ↔ `median`; "
        "`FedTrimmedAvg(beta)` ↔ `trimmed_mean` with f = int(beta·n) (beta = f/n here, so both trim f per side); "
        "`Krum(num_malicious_nodes=f)` ↔ `krum`; `MultiKrum(num_malicious_nodes=f, num_nodes_to_select=m)` ↔ "
        '`{"name": "multi_krum", "m": m}` (m = n − f); `Bulyan(num_malicious_nodes=f)` ↔ `bulyan`.',
        "",
        "Replies: four float32 arrays per reply, `mlp` = {w1 784×100, b1 100, w2 100×10, b2 10} (d = 79,510) and "
        "`wide` = {w1 784×1200, b1 1200, w2 1200×50, b2 50} (d = 1,002,050). Each reply is a common model c ~ N(0, 1) plus "
        f"its own update: {HONEST_STD} N(0, 1) for the honest nodes, {OUTLIER_SHIFT:g} + {OUTLIER_STD} N(0, 1) for the f far "
        "outliers (a tight cluster, at random positions), `num-examples` 10 each; fixed seed "
        f"{meta['seed']}. Times: median of {meta['repeats']} `time.perf_counter` measurements after one warm-up, of the whole "
        "step a strategy pays: Flower's `aggregate_train` (reading the `.npy` blobs, its maths, building the output "
        "`ArrayRecord`, its metric aggregation; its INFO log lines switched off) and byzlearn's `aggregate_records` "
        "(layout check, decoding, the rule, encoding). "
        "Speed-up = Flower ms / byzlearn ms. "
        f"Agreement: max |byzlearn − Flower| ≤ {TOL:g} over all d coordinates (the outputs are float32 values of magnitude ≲ 15, "
        "where one ulp is ≤ 1.9e-6; the non-zero differences below are summation-order rounding).",
        "",
    ]
    L += table(rows)
    L += ["", "## Deviations", ""]
    L += bulyan_section(res)
    L += krum_small_n_section(res["krum_small_n"])
    L += cancellation_section(res["float32_cancellation"])
    L += weighted_section(res["weighted_multikrum"])
    L += refusal_section(rows)
    L += timing_section(rows, res["gc"])
    L += consumed_section(res["consumed_replies"])
    L += [
        "### Smaller points",
        "",
        "- **FedTrimmedAvg's count is int(beta·n)**, truncated: the default beta = 0.2 trims 2 per side at n = 14 (not 2.8), "
        "and 0 at n ≤ 4 (a plain mean). byzlearn's `trimmed_mean` takes the count itself (f, or `b` ≥ f) and refuses n ≤ 2b.",
        "- **Median and trimmed mean agree exactly or to rounding**: both compute the even-n median as the mean of the two middle "
        "values (numpy `(a+b)/2`, byzlearn `0.5a + 0.5b`: the same float32 result); the trimmed mean sums the kept values in a "
        "different order (numpy's partition leaves them unordered), a few ulps.",
        "- **(Multi-)Krum distances**: Flower's `compute_distances` forms ‖x‖² + ‖y‖² − 2x·y in float32 on the raw models and "
        "takes `argsort(row)[1 : k+1]`, assuming the row's own entry sorts first; byzlearn centres the rows at a median-norm "
        "row before the Gram product and sets the diagonal to exactly 0. Same selections in the main table; see the "
        "cancellation note above for where they part.",
        "- **Tie-breaking**: byzlearn breaks score ties towards the lowest index and, in Bulyan's second step, takes the smaller "
        "of two equally close values first; Flower uses `np.argsort` (quicksort, not stable) for the scores and "
        "`np.argpartition` for the closest values, so exact ties may resolve differently"
        " (the “exact ties” in the Bulyan table).",
        "- **Metrics**: Flower's strategies also return a `MetricRecord` (the num-examples-weighted mean of the replies' metrics, "
        "for (Multi-)Krum and Bulyan over the selected replies only); `aggregate_records` returns the arrays only. "
        "byzlearn's `RobustStrategy` returns its own counters as train metrics; not compared here.",
        "",
    ]
    return "\n".join(L) + "\n"


def bulyan_section(res: dict) -> list[str]:
    notes = res["bulyan"]
    L = [
        "### Bulyan: one Multi-Krum pass instead of iterated Krum",
        "",
        "Bulyan (El Mhamdi et al., 2018) selects θ = n − 2f replies by applying Krum *iteratively*: pick the reply with the lowest "
        "score, remove it, recompute the scores on the r remaining replies (r − f − 2 neighbours), θ times; then, per coordinate, "
        "it averages the β = θ − 2f selected values closest to their median. byzlearn's `bulyan` does exactly that. Flower 1.42's "
        "Message-API `Bulyan` (`serverapp/strategy/bulyan.py`) calls `select_multikrum(contents, f, θ)` once: the θ lowest "
        "scores, all computed on the n replies with n − f − 2 neighbours, nothing removed. (Flower's classic-API "
        "`flwr.server.strategy.Bulyan`, `aggregate_bulyan` in `server/strategy/aggregate.py`, does iterate.) The sets differ "
        "because the iterative scores change as picks are removed: the t-th pick is scored against the replies not yet "
        "picked, with r − f − 2 neighbours, so a reply that was central mainly thanks to already-picked neighbours falls "
        "behind a reply whose neighbours are still there. Step 2 is the same in both.",
        "",
        "The script checks this with numpy re-implementations of both selections written from the description (float64 "
        "distances of centred rows; then the mean of the β picked values closest to their median, in the replies' dtype) and "
        "with Flower's own `Bulyan` given an iterative `selection_rule` (the script's `iterative_selection_rule`), once on the "
        "float32 replies and once on the same replies cast to float64 (byzlearn then computes in float64):",
        "",
        "| layout | n | f | θ / β | outliers | picked only by the one pass | picked only iteratively | outliers picked (one pass / "
        "iterative) | byzlearn vs Flower | Flower vs numpy one pass | byzlearn vs numpy one pass | byzlearn vs numpy iterative "
        "| smallest score gap, iterative | float64: byzlearn vs numpy iterative | float64: byzlearn vs Flower with iterative "
        "`selection_rule` | RMS distance to the honest mean (Flower / byzlearn) |",
        "|---|---:|---:|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for b in notes:

        def c(key, b=b):
            x = b[key]
            if x["agree"]:
                word = "equal"
            elif x.get("over_tol_only_at_ties"):
                word = f"equal but for {x['coords_over_tol']} exact tie{'s' if x['coords_over_tol'] > 1 else ''}"
            else:
                word = "differs"
            return f"{fmt_diff(x['max_abs_diff'])} ({word})"

        r = b["rms_to_honest_mean"]
        L.append(
            f"| {b['layout']} | {b['n']} | {b['f']} | {b['theta']} / {b['beta']} | {b['outliers']} | {b['only_one_pass'] or '—'} | "
            f"{b['only_iterative'] or '—'} | {b['outliers_picked_one_pass'] or '—'} / {b['outliers_picked_iterative'] or '—'} | "
            f"{c('byzlearn_vs_flower')} | {c('flower_vs_numpy_one_pass')} | {c('byzlearn_vs_numpy_one_pass')} | "
            f"{c('byzlearn_vs_numpy_iterative')} | {b['iterative_min_relative_gap']:.1e} (pick {b['iterative_min_gap_step']}) | "
            f"{c('float64_byzlearn_vs_numpy_iterative')} | {c('float64_byzlearn_vs_flower_iterative_rule')} | "
            f"{r['flower']:.3g} / {r['byzlearn']:.3g} |"
        )
    L.append("")
    if not notes:
        return L
    checks = ("flower_vs_numpy_one_pass", "float64_byzlearn_vs_numpy_iterative", "float64_byzlearn_vs_flower_iterative_rule")
    if not all(same(b[k]) for b in notes for k in checks):
        return L + ["Not every re-implementation matched its side to the tolerance; see the JSON (`bulyan`) for the numbers.", ""]
    differ = [b for b in notes if not same(b["byzlearn_vs_numpy_one_pass"])]
    text = (
        "Flower's output equals the one-pass re-implementation. byzlearn's output equals the iterative re-implementation "
        "and Flower's own `Bulyan` once that is handed the iterative selection (on the float64 replies in every setting"
        + ("" if all(same(b["byzlearn_vs_numpy_iterative"]) for b in notes) else "; on the float32 ones but for the near-tie below")
        + f"), and does not equal the one-pass re-implementation ({len(differ)} of {len(notes)} settings here): the whole "
        "difference is the selection."
    )
    if any(b[k].get("coords_over_tol") for b in notes for k in checks):
        text += (
            " (An “exact tie” is a coordinate where two picked values are exactly equally close to the median at the edge of "
            "step 2's window: byzlearn takes the smaller value, Flower's `np.argpartition` either one.)"
        )
    for b in notes:
        if not same(b["byzlearn_vs_numpy_iterative"]):
            text += (
                f" On the float32 {b['layout']} replies byzlearn's iterative picks differ from the float64 reference's too: at "
                f"pick {b['iterative_min_gap_step']} the two best remaining scores differ by {b['iterative_min_relative_gap']:.1e} "
                f"of their value, within the float32 rounding of distances summed over d = {dim(b['layout']):,} coordinates: "
                "a near-tie between honest replies, settled one way in float32 and the other in float64 (on the float64 "
                "replies byzlearn's output is the reference's)."
            )
    bad_it = [b for b in notes if b["outliers_picked_iterative"]]
    if bad_it:
        f = bad_it[0]["f"]
        where = "; ".join(
            f"{b['layout']}: reply {i} at pick {b['iterative_order'].index(i) + 1} of {b['theta']}"
            for b in bad_it
            for i in b["outliers_picked_iterative"]
        )
        text += (
            f" The iterative selection also picks an outlier ({where}); the one pass picks "
            f"{'none' if not any(b['outliers_picked_one_pass'] for b in notes) else 'some too'}. For the last pick r = 2f + 1 "
            f"replies are left and Krum scores each by its r − f − 2 = f − 1 = {f - 1} nearest, exactly the other members of a "
            "tight cluster of f outliers. Bulyan is built for that (step 2 keeps, per coordinate, the β = θ − 2f values closest "
            "to the median, so up to f bad picks cannot drag it), and both outputs stay about as close to the honest mean "
            f"(last column; the honest replies scatter {HONEST_STD} per coordinate around the model)."
        )
    return L + [text, ""]


def krum_small_n_section(rows: list[dict]) -> list[str]:
    L = [
        "### Krum at n ≤ 2f + 2",
        "",
        "Krum's guarantee (Blanchard et al., 2017) needs n > 2f + 2. byzlearn refuses "
        "outside it; Flower's `Krum`/`MultiKrum` never check and use `max(1, n − f − 2)` neighbours. Same replies as above "
        "(honest 0.1 N(0, 1) updates, the f = 2 outliers a tight far cluster), mlp layout:",
        "",
        "| n | f | outliers | Flower's neighbours | Flower returns | byzlearn |",
        "|---:|---:|---|---:|---|---|",
    ]
    for r in rows:
        who = f"reply {r['flower_pick']} ({'an **outlier**' if r['flower_pick_is_outlier'] else 'honest'})"
        mine = f"reply {r['byzlearn_pick']}" if r["byzlearn_pick"] is not None else f"`ValueError: {r['byzlearn_says']}`"
        L.append(f"| {r['n']} | {r['f']} | {r['outliers']} | {r['flower_neighbours']} | {who} | {mine} |")
    lost = [r["n"] for r in rows if r["flower_pick_is_outlier"]]
    L += [
        "",
        f"Flower returns an outlier's model at n = {', '.join(map(str, lost)) or 'none'}: with max(1, n − f − 2) = 1 it scores "
        "each reply by its single nearest neighbour, and two colluding outliers are each other's nearest. At n = 2f + 2 "
        "(two neighbours) the pair needs one honest neighbour and loses here, but Krum's guarantee no longer holds. "
        "`aggregate_records` raises the rule's requirement as a `ValueError` before decoding anything.",
        "",
    ]
    return L


def cancellation_section(rows: list[dict]) -> list[str]:
    def picked(r):
        return "the exact choice" if r["flower_pick"] == r["exact_pick"] else f"reply {r['flower_pick']}, not {r['exact_pick']}"

    L = [
        "### Krum's distances in float32 on whole models (cancellation)",
        "",
        "Flower's replies carry whole models, not updates, so replies differ from one another by a small update while "
        "‖x‖² is large. Flower's `compute_distances` forms ‖x‖² + ‖y‖² − 2x·y in float32 on the raw models: its rounding "
        "error is roughly proportional to ‖x‖² (a few units at ‖x‖² ≈ 1e6, as its diagonal, which should be 0, shows), whatever the "
        "distance. byzlearn subtracts a median-norm row before the Gram product (differences of nearby rows lose little), so its error "
        "scales with the distances. Here: wide layout (d = 1,002,050, c ~ N(0, 1) so ‖x‖² ≈ 1e6), n = 10, f = 2 far outliers "
        "as above, honest node i = c + s·(1 + i/10)·N(0, 1), so the exact Krum choice is the honest node with the smallest "
        "update, by a clear margin. Errors and distances over honest pairs:",
        "",
        "| update scale s | exact Krum pick | Flower picks | its exact-score rank | its exact score / best | byzlearn picks "
        "| Flower's worst relative distance error | Flower's largest \\|diagonal\\| | smallest true distance |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        L.append(
            f"| {r['update_scale']:g} | {r['exact_pick']} | {r['flower_pick']} | {r['flower_pick_exact_rank']} | "
            f"{r['flower_pick_score_ratio']:.3g} | {r['byzlearn_pick']} | {r['flower_distance_max_rel_error']:.2g} | "
            f"{r['flower_diagonal_max']:.3g} | {r['smallest_true_distance']:.3g} |"
        )
    L += [
        "",
        "(Exact: float64 distances of centred rows; rank 0 = the exact choice.) "
        + " ".join(
            f"At s = {r['update_scale']:g} Flower's worst distance error is {r['flower_distance_max_rel_error']:.2g}× the "
            f"distance and its Krum picks {picked(r)}."
            for r in rows
        )
        + " The main table uses s = 0.1, where the errors are harmless; from s = 1e-3 (updates 0.1 % of the weights, as late "
        "in training with a small learning rate) they are as large as the distances and Flower's Krum ranks the honest replies "
        "by rounding noise. The far outliers are still excluded, but a Byzantine reply placed within the noise floor is "
        "judged by rounding noise rather than by its distance; Multi-Krum and Bulyan use the same `compute_distances`. "
        "byzlearn picks the exact choice at every scale. (Flower's classic-API `aggregate_krum` computes ‖x − y‖² from the "
        "differences and does not have this problem.)",
        "",
    ]
    return L


def weighted_section(w: dict) -> list[str]:
    return [
        "### Multi-Krum weights by num-examples; byzlearn does not",
        "",
        "Flower's `MultiKrum` returns `aggregate_arrayrecords(selected, 'num-examples')`, the num-examples-weighted mean of the "
        "selected replies; byzlearn's rules are unweighted (`aggregate_records` takes only the `ArrayRecord`s). With equal "
        "counts (the main table) the two are the same; with num-examples "
        f"{w['num_examples']} (n = {w['n']}, f = {w['f']}, m = {w['m']}, selected {w['selected']}): "
        f"max |byzlearn − Flower| = {fmt_diff(w['byzlearn_vs_flower']['max_abs_diff'])}; Flower vs the weighted mean of the "
        f"selected (numpy): {fmt_diff(w['flower_vs_weighted_mean']['max_abs_diff'])}; byzlearn vs their plain mean: "
        f"{fmt_diff(w['byzlearn_vs_plain_mean']['max_abs_diff'])}. Note that num-examples is self-reported: in Flower a "
        "Byzantine reply that passes the selection can claim any weight and dominate the mean. (Krum selects one reply, so "
        "weights do not matter; FedMedian, FedTrimmedAvg and Bulyan ignore them too.)",
        "",
    ]


def refusal_section(rows: list[dict]) -> list[str]:
    r = next((x for x in rows if x["agree"] is None), None)
    if r is None:
        return []
    return [
        "### Bulyan below n = 4f + 3",
        "",
        f"Both refuse (n = {r['n']}, f = {r['f']}), differently. Flower logs a warning and returns `(None, None)`, so "
        "`Strategy.start` keeps the previous model and the round passes with only this warning: "
        f"“{r['flower_says']}”. byzlearn raises `ValueError: {r['byzlearn_says']}`.",
        "",
    ]


def span(rows: list[dict], prefixes: tuple[str, ...]) -> str:
    """The range of the speed-ups of the pairs whose Flower side is one of ``prefixes``."""
    xs = [r["speedup"] for r in rows if r["speedup"] is not None and r["pair"].split("(")[0].split(" ")[0] in prefixes]
    return f"{min(xs):.1f}x to {max(xs):.1f}x" if xs else "—"


def timing_section(rows: list[dict], gcc: dict) -> list[str]:
    bul = [r for r in rows if r["pair"].startswith("Bulyan") and r["flower_ms"] is not None]
    L = [
        "### Where the time goes",
        "",
        "Both sides decode the same `.npy` blobs (`np.load`) and encode the output the same way, so the differences are the "
        "maths. FedMedian and FedTrimmedAvg run `np.median` / `np.partition` per array, on one thread; byzlearn sorts the "
        "stacked rows once (numpy's sort over column blocks in 2 threads): speed-up "
        f"{span(rows, ('FedMedian', 'FedTrimmedAvg'))}. Krum and Multi-Krum: speed-up {span(rows, ('Krum', 'MultiKrum'))}; "
        "Flower forms one float32 Gram product of the raw rows (BLAS), byzlearn a centred one (an extra pass over the data, "
        "which buys the accuracy shown in the cancellation note).",
    ]
    if bul:
        parts = [
            f"{r['layout']}, n = {r['n']}: {r['flower_gc_ms']:.0f} of its {fmt_ms(r['flower_ms'])} ms in garbage collection "
            f"({r['flower_gc_full_collections']} full collections)"
            for r in bul
        ]
        L[-1] += (
            " Flower's Bulyan is slow for a reason outside the rule: it reads each of the θ selected replies with "
            "`ArrayRecord.to_numpy_ndarrays(keep_input=False)`, which ends with a full `gc.collect()`. Measured with "
            "`gc.callbacks` in the median timed call: " + "; ".join(parts) + f". A full collection costs about {gcc['ms']:.0f} ms in "
            f"this process ({gcc['tracked_objects']:,} objects tracked, with torch, numpy and flwr imported, much like a "
            "ServerApp process): the cost grows with the server's heap, not with the model."
        )
    return L + [""]


def consumed_section(rows: list[dict]) -> list[str]:
    def who(r):
        return f"{r['strategy']} {r['emptied']} of {r['n']}"

    return [
        "### Flower's aggregation empties the replies",
        "",
        "`aggregate_train` reads the arrays destructively: FedMedian and FedTrimmedAvg `pop` every key from every reply's "
        "`ArrayRecord`, Bulyan calls `to_numpy_ndarrays(keep_input=False)` (then `gc.collect()`) on the replies it selected. "
        f"Replies left with an empty `ArrayRecord` (n = {rows[0]['n']}, f = 1): " + "; ".join(who(r) for r in rows) + ". "
        "A wrapper that looks at the replies after Flower's aggregation (logging, a second rule, an adversary's bookkeeping) "
        "finds them empty; this benchmark rebuilds the reply messages before every Flower call, outside the timed region. "
        "byzlearn's `aggregate_records` only reads them.",
        "",
    ]
