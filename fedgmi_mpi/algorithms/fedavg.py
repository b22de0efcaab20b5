"""FedAvg (McMahan et al. 2017): one global classifier. Each client trains it on all its samples
from the global model; the server moves it by the sample-count-weighted mean of the deltas. Every
client predicts with the global model (no personalisation); no proportions."""
from __future__ import annotations

from .classifiers import ClassifierBaseline


class FedAvg(ClassifierBaseline):
    name = "fedavg"
