"""Do `fedgmi infer`'s credible intervals hold the truth as often as they claim?

Trains nothing: reads a finished log's model and a data file with truth (`component`,
`proportions`), infers the chosen clients' proportions and prints, for several levels, the share
of (client, component) intervals that hold the Dirichlet draw (the proportions' interval) and
the actual share of the client's samples (the shares' interval), and the proportion MAE.

    fedgmi run --out runs/default.h5              # or mpiexec ...; any FedGMI log
    fedgmi export-scenario --set scenario.unseen_clients=200 --out runs/unseen200.npz
    python benchmarks/infer_coverage.py runs/default.h5 runs/unseen200.npz --clients 48-239
(the first 48 clients of that file are the default run's own; 48.. are new unseen clients)
"""
from __future__ import annotations

import argparse

import numpy as np

from fedgmi_mpi.analysis.infer import infer_clients, parse_clients, score
from fedgmi_mpi.analysis.model import read_model
from fedgmi_mpi.scenarios.npz_file import read_arrays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log")
    parser.add_argument("data")
    parser.add_argument("--clients", default=None)
    parser.add_argument("--prior", type=float, nargs="+", default=[0.5, 1.0])
    parser.add_argument("--levels", type=float, nargs="+", default=[0.5, 0.8, 0.9, 0.95])
    parser.add_argument("--draws", type=int, default=2000)
    args = parser.parse_args()
    model = read_model(args.log)
    arrays = read_arrays(args.data, required=("x", "component", "proportions"), num_components=model.num_components)
    clients = parse_clients(args.clients, np.unique(arrays["client"]))
    print(f"{len(clients)} clients x {model.num_components} components; model of round {model.round}")
    print("| prior | level | holds the Dirichlet draw | holds the actual share | MAE vs actual | MAE vs Dirichlet |")
    print("|---|---|---|---|---|---|")
    for prior in args.prior:
        results = infer_clients(model, arrays, clients, prior=prior, draws=args.draws, keep_draws=True)
        for level in args.levels:
            tail = (1 - level) / 2
            for r in results:
                proportions, shares = r.draws
                r.lower, r.upper = np.quantile(proportions, [tail, 1 - tail], axis=0)
                r.share_lower, r.share_upper = np.quantile(shares, [tail, 1 - tail], axis=0)
            s = score(results, model.matching)
            print(f"| {prior:g} | {level:.2f} | {s.coverage:.3f} | {s.share_coverage:.3f} | {s.mae_actual:.4f} | "
                  f"{s.mae_dirichlet:.4f} |")


if __name__ == "__main__":
    main()
