"""Learned aggregators: coordinatewise RNN/ARNN meta-trained by BPTT (Ji et al., IJCAI 2019) and our variants."""

from .aggregator import LearnedAggregator, learned_update, load_aggregator, save_aggregator
from .network import CoordinatewiseRNN
from .preprocess import log_sign, loss_features, normalise, screen_rows, trial_points

__all__ = [
    "CoordinatewiseRNN",
    "LearnedAggregator",
    "learned_update",
    "load_aggregator",
    "save_aggregator",
    "log_sign",
    "loss_features",
    "normalise",
    "screen_rows",
    "trial_points",
]
