"""The same FedAvg workload in a bare loop, apple's pfl, Flower and fedgmi-mpi; prints one table, asserts nothing.

  .venv/bin/python benchmarks/peer_speed.py [--runs 3] [--peers-python PY] [--only bare,pfl,flower,fedgmi] [--flower-cpus 1]

Workload: MLP 64-128-128-10 (ReLU) from one initial model; 40 clients x 100 load_digits samples (x / 16) drawn with
replacement (numpy seed 0); each round every client runs one epoch of plain SGD (lr 0.05, batch 20, in order: 5 steps)
from the global model, then FedAvg weighted by sample count; 10 rounds; 1 torch thread per process; test accuracy at
the end on 400 held-out digits. Per framework, --runs fresh launches: the median over runs of the median s/round;
start-up = launch to the end of round 1 less one median round (lazy set-up inside round 1, e.g. Ray actors, counts);
peak memory = the largest sum of RSS over the process tree (/proc, every 0.2 s). Flower and pfl run as
`peer_speed.py --worker NAME` under --peers-python, a separate venv:
  python3.11 -m venv /work/peers-venv && /work/peers-venv/bin/pip install torch==2.13.0 'flwr[simulation]' pfl scikit-learn psutil
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CLIENTS, SAMPLES, TEST_PER_CLIENT, ROUNDS, LR, BATCH, SEED = 40, 100, 10, 10, 0.05, 20, 0
PEERS_PYTHON = Path("/work/peers-venv/bin/python")


# ---- the workload, shared by every worker ---------------------------------------------------
def make_data() -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray, np.ndarray]:
    """The 40 clients' (x, y) and the common test set's x, y."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = (digits.data / 16).astype(np.float32), digits.target.astype(np.int64)
    rng = np.random.default_rng(SEED)
    test, pool = np.split(rng.permutation(len(x)), [CLIENTS * TEST_PER_CLIENT])
    clients = [(x[i], y[i]) for i in (rng.choice(pool, SAMPLES, replace=True) for _ in range(CLIENTS))]
    return clients, x[test], y[test]


def make_model() -> Any:
    """The MLP, with the loss() and metrics() pfl asks of a torch module."""
    import torch
    from torch import nn

    class MLP(nn.Sequential):
        def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return nn.functional.cross_entropy(self(x), y)

        @torch.no_grad()
        def metrics(self, x: torch.Tensor, y: torch.Tensor) -> dict:
            from pfl.metrics import Weighted
            return {"accuracy": Weighted((self(x).argmax(1) == y).sum().item(), len(y))}

    model = MLP(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    # fedgmi-mpi's initial model for seed 0 (rng.torch_generator(seed, SERVER=3, 0), then per layer
    # U(+-1/sqrt(fan_in)) weights [in, out] and bias). After 50 SGD steps test accuracy still depends
    # on the start (0.21-0.59 over seeds), so all four start from this one.
    state = np.random.SeedSequence([SEED, 3, 0]).generate_state(1, dtype=np.uint64)[0]
    gen = torch.Generator().manual_seed(int(state & 0x7FFF_FFFF_FFFF_FFFF))
    with torch.no_grad():
        for layer in model[::2]:
            bound = layer.in_features ** -0.5
            layer.weight.copy_(((torch.rand(layer.in_features, layer.out_features, generator=gen) * 2 - 1) * bound).T)
            layer.bias.copy_((torch.rand(layer.out_features, generator=gen) * 2 - 1) * bound)
    return model


def local_train(model: Any, x: Any, y: Any) -> None:
    """One epoch of plain SGD over in-order batches."""
    import torch

    opt = torch.optim.SGD(model.parameters(), lr=LR)
    for i in range(0, len(x), BATCH):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[i:i + BATCH]), y[i:i + BATCH]).backward()
        opt.step()


def report(starts: list[float], end: float, model: Any, x_test: np.ndarray, y_test: np.ndarray, version: str) -> None:
    """A worker's result line: wall-clock start of every round, end of the last, test accuracy."""
    import torch

    with torch.no_grad():
        accuracy = float((model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean())
    print("RESULT " + json.dumps({"first_round_at": starts[0], "round_s": list(np.diff([*starts, end])),
                                  "accuracy": accuracy, "version": version}), flush=True)


# ---- the workers, each in its own process ---------------------------------------------------
def worker_bare() -> None:
    import torch
    from torch.nn.utils import parameters_to_vector as flat, vector_to_parameters as unflat

    clients, x_test, y_test = make_data()
    clients = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in clients]
    model = make_model()
    global_model, starts = flat(model.parameters()).detach(), []
    for _ in range(ROUNDS):
        starts.append(time.time())
        total = torch.zeros_like(global_model)
        for x, y in clients:
            unflat(global_model.clone(), model.parameters())  # the parameters become views of the copy
            local_train(model, x, y)
            total.add_(flat(model.parameters()).detach(), alpha=len(x))
        global_model = total / sum(len(x) for x, _ in clients)
    end = time.time()
    unflat(global_model, model.parameters())
    report(starts, end, model, x_test, y_test, f"torch {torch.__version__}")


def worker_flower(cpus_per_client: float) -> None:
    """Flower's Message API (ClientApp, ServerApp, FedAvg strategy) under run_simulation (Ray)."""
    import flwr
    import ray
    import torch
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    cache: dict[str, Any] = {}  # per Ray actor process: the data and one model, built once
    client_app, server_app, starts, final = ClientApp(), ServerApp(), [], {}

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        if not cache:
            torch.set_num_threads(1)
            cache["clients"], cache["model"] = make_data()[0], make_model()
        x, y = cache["clients"][int(context.node_config["partition-id"])]
        model = cache["model"]
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        local_train(model, torch.from_numpy(x), torch.from_numpy(y))
        return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()),
                                   "metrics": MetricRecord({"num-examples": len(x)})}), reply_to=msg)

    class TimedFedAvg(FedAvg):  # a round starts when the strategy configures it
        def configure_train(self, server_round: int, *args: Any, **kwargs: Any) -> Any:
            starts.append(time.time())
            return super().configure_train(server_round, *args, **kwargs)

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = TimedFedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=CLIENTS,
                               min_available_nodes=CLIENTS)  # weighted by "num-examples"
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord(make_model().state_dict()), num_rounds=ROUNDS)
        final["end"], final["arrays"] = time.time(), result.arrays

    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=CLIENTS, backend_config={
        "client_resources": {"num_cpus": cpus_per_client, "num_gpus": 0.0},
        "init_args": {"num_cpus": 2, "logging_level": "error", "log_to_driver": False}})
    model = make_model()
    model.load_state_dict(final["arrays"].to_torch_state_dict())
    _, x_test, y_test = make_data()
    report(starts, final["end"], model, x_test, y_test,
           f"flwr {flwr.__version__}, ray {ray.__version__}, {cpus_per_client:g} CPU/client")


def worker_pfl() -> None:
    """pfl's PyTorch FedAvg on its SimulatedBackend (one process), as in its tutorials."""
    import pfl
    import torch
    from pfl.aggregate.simulate import SimulatedBackend
    from pfl.aggregate.weighting import WeightByDatapoints
    from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
    from pfl.callback.base import TrainingProcessCallback
    from pfl.data.dataset import Dataset
    from pfl.data.federated_dataset import FederatedDataset
    from pfl.data.sampling import get_user_sampler
    from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams
    from pfl.metrics import Metrics
    from pfl.model.pytorch import PyTorchModel

    clients, x_test, y_test = make_data()
    tensors = [[torch.from_numpy(x), torch.from_numpy(y)] for x, y in clients]  # numpy would be cast to float
    starts = []

    def federated() -> FederatedDataset:  # cohort 40 of 40 with minimize_reuse: every user every round
        return FederatedDataset(lambda uid: Dataset(raw_data=tensors[uid], user_id=uid),
                                get_user_sampler("minimize_reuse", list(range(CLIENTS))))

    class Timer(TrainingProcessCallback):
        def on_train_begin(self, *, model: Any) -> Metrics:
            starts.append(time.time())
            return Metrics()

        def after_central_iteration(self, aggregate_metrics: Metrics, model: Any, *,
                                    central_iteration: int) -> tuple[bool, Metrics]:
            starts.append(time.time())
            return False, Metrics()

    module = make_model()
    model = PyTorchModel(model=module, local_optimizer_create=torch.optim.SGD,
                         central_optimizer=torch.optim.SGD(module.parameters(), lr=1.0))
    FederatedAveraging().run(
        algorithm_params=NNAlgorithmParams(central_num_iterations=ROUNDS, evaluation_frequency=ROUNDS,
                                           train_cohort_size=CLIENTS, val_cohort_size=0),
        backend=SimulatedBackend(training_data=federated(), val_data=federated(), postprocessors=[WeightByDatapoints()]),
        model=model, model_eval_params=NNEvalHyperParams(local_batch_size=None), callbacks=[Timer()],
        model_train_params=NNTrainHyperParams(local_learning_rate=LR, local_num_epochs=1, local_batch_size=BATCH))
    report(starts[:-1], starts[-1], module, x_test, y_test, f"pfl {pfl.__version__}")


# ---- the parent: launch, poll memory, collect -----------------------------------------------
def tree_rss(root: int) -> int:
    """Sum of RSS (bytes) of root and all its descendants (/proc/PID/task/TID/children)."""
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            for tid in os.listdir(f"/proc/{pid}/task"):
                stack += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except (OSError, ValueError):  # the process or thread has just gone
            pass
    return total


def launch(cmd: list[str], env: dict[str, str]) -> tuple[float, float, int, str]:
    """Run cmd, polling its process tree's RSS: launch time, exit time, peak bytes, stdout."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started, peak = time.time(), 0
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1", **env})
        while proc.poll() is None:
            peak = max(peak, tree_rss(proc.pid))
            time.sleep(0.2)  # one poll of a Ray tree costs ~7 ms of CPU
        ended = time.time()
        out.seek(0), err.seek(0)
        if proc.returncode != 0:  # the last stderr line that is not MPI's own abort notice
            lines = [line for line in err.read().splitlines() if line.strip() and "MPI_Abort" not in line]
            raise RuntimeError(f"exit {proc.returncode}: {(lines or ['(no stderr)'])[-1][:300]}")
        return started, ended, peak, out.read()


def run_worker(python: str, name: str, extra: list[str]) -> dict[str, Any]:
    started, _, peak, stdout = launch([python, str(Path(__file__).resolve()), "--worker", name, *extra],
                                      {"FLWR_TELEMETRY_ENABLED": "0"})
    result = json.loads([s for s in stdout.splitlines() if s.startswith("RESULT ")][-1][len("RESULT "):])
    per_round = float(np.median(result["round_s"]))
    return {"per_round": per_round, "startup": result["first_round_at"] - started + result["round_s"][0] - per_round,
            "peak": peak, "accuracy": result["accuracy"], "version": result["version"]}


def run_fedgmi(python: str, folder: Path) -> dict[str, Any]:
    """fedgmi-mpi's FedAvg under mpiexec -n 3 on the workload as a user npz; figures from its HDF5 log."""
    import h5py

    data, out = folder / "peer_workload.npz", folder / f"fedgmi-{time.time_ns()}.h5"
    if not data.exists():  # each client: its 100 training samples, then its 10 of the common test set
        clients, x_test, y_test = make_data()
        tests = np.split(np.arange(len(x_test)), CLIENTS)
        np.savez(data, x=np.concatenate([np.concatenate([x, x_test[t]]) for (x, _), t in zip(clients, tests)]),
                 y=np.concatenate([np.concatenate([y, y_test[t]]) for (_, y), t in zip(clients, tests)]),
                 client=np.repeat(np.arange(CLIENTS), SAMPLES + TEST_PER_CLIENT),
                 test=np.tile(np.r_[np.zeros(SAMPLES, bool), np.ones(TEST_PER_CLIENT, bool)], CLIENTS))
    sets = [f"seed={SEED}", "scenario.name=npz", f"scenario.path={data}", "scenario.unseen_clients=0",
            "scenario.num_components=1", "model.hidden=128", "algorithm.name=fedavg", "algorithm.optimizer=sgd",
            f"algorithm.lr={LR}", f"algorithm.batch_size={BATCH}", "algorithm.local_epochs=1", "algorithm.shuffle=false",
            f"algorithm.rounds={ROUNDS}", "algorithm.eval_every=0", "runtime.threads_per_rank=1"]
    started, ended, peak, _ = launch([str(Path(python).parent / "mpiexec"), "-n", "3", python, "-m", "mpi4py", "-m",
                                      "fedgmi_mpi", "run", "--quiet", "--out", str(out),
                                      *[a for s in sets for a in ("--set", s)]], {})
    with h5py.File(out, "r") as f:
        phases = json.loads(f["rounds/phase"].attrs["phases"])
        rounds = f["rounds/wall_time"][()][f["rounds/phase"][()] == phases.index("train")]
        summary, versions = json.loads(f.attrs["summary"]), json.loads(f.attrs.get("versions", "{}"))
    per_round = float(np.median(rounds))
    # The loop's clock (summary wall_time_s) starts just before round 1; the rest of the job's life is
    # start-up plus MPI finalize and exit, so this start-up is an upper bound.
    return {"per_round": per_round, "startup": ended - started - summary["wall_time_s"] + rounds[0] - per_round,
            "peak": peak, "accuracy": summary["accuracy"], "version": f"torch {versions.get('torch', '?')}, 3 ranks"}


def measure(label: str, once: Callable[[], dict[str, Any]], runs: int) -> dict[str, Any] | str:
    results = []
    for i in range(runs):
        try:
            results.append(once())
        except Exception as exc:  # one framework failing must not cost the others' rows
            return f"skipped: {str(exc).split('SKIP: ')[-1]}" if "SKIP: " in str(exc) else f"failed: {exc}"
        r = results[-1]
        print(f"  {label} run {i + 1}/{runs}: {r['per_round']:.4f} s/round, start-up {r['startup']:.1f} s, "
              f"peak {r['peak'] / 2**20:.0f} MiB, accuracy {r['accuracy']:.4f}", file=sys.stderr, flush=True)
    return {"per_round": statistics.median(r["per_round"] for r in results), "peak": max(r["peak"] for r in results),
            "startup": statistics.median(r["startup"] for r in results), **{k: r[k] for k in ("accuracy", "version")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", choices=["bare", "flower", "pfl"], help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--peers-python", default=str(PEERS_PYTHON) if PEERS_PYTHON.exists() else "")
    parser.add_argument("--fedgmi-python", default=str(REPO / ".venv/bin/python"))
    parser.add_argument("--flower-cpus", type=float, default=1.0, help="Ray CPUs per Flower client (1: 2 actors on 2 cores)")
    parser.add_argument("--only", default="bare,pfl,flower,fedgmi")
    args = parser.parse_args()
    if args.worker:
        try:
            import torch
            torch.set_num_threads(1)
            {"bare": worker_bare, "pfl": worker_pfl, "flower": lambda: worker_flower(args.flower_cpus)}[args.worker]()
        except ImportError as exc:
            sys.exit(f"SKIP: {args.worker} cannot be imported by {sys.executable} ({exc})")
        return

    rows: dict[str, dict[str, Any] | str] = {}
    with tempfile.TemporaryDirectory(prefix="peer_speed_") as tmp:
        for name, label in (("bare", "bare loop"), ("pfl", "pfl"), ("flower", "Flower"), ("fedgmi", "fedgmi-mpi")):
            if name not in args.only.split(","):
                continue
            if name in ("flower", "pfl") and not (args.peers_python and Path(args.peers_python).exists()):
                rows[label] = f"skipped: no peers interpreter (--peers-python {args.peers_python or 'unset'})"
            elif name == "fedgmi":
                rows[label] = measure(label, lambda: run_fedgmi(args.fedgmi_python, Path(tmp)), args.runs)
            else:
                python = sys.executable if name == "bare" else args.peers_python
                extra = ["--flower-cpus", str(args.flower_cpus)] if name == "flower" else []
                rows[label] = measure(label, lambda: run_worker(python, name, extra), args.runs)  # noqa: B023 (called now)

    ref = rows.get("fedgmi-mpi") if isinstance(rows.get("fedgmi-mpi"), dict) else None
    print(f"\nFedAvg, MLP 64-128-128-10, {CLIENTS} clients x {SAMPLES} digits, {ROUNDS} rounds; median of {args.runs} "
          "runs; ratios = this / fedgmi-mpi (above 1: fedgmi-mpi is faster / smaller)")
    print(f"{'framework':12s} {'s/round':>8s} {'start-up s':>10s} {'peak MiB':>9s} {'test acc':>8s}   "
          f"{'s/round':>7s} {'start-up':>8s} {'memory':>7s}   version")
    for label, r in rows.items():
        if isinstance(r, str):
            print(f"{label:12s} {r}")
            continue
        ratios = [f"{r[k] / ref[k]:.2f}x" if ref else "n/a" for k in ("per_round", "startup", "peak")]
        print(f"{label:12s} {r['per_round']:8.4f} {r['startup']:10.2f} {r['peak'] / 2**20:9.0f} {r['accuracy']:8.4f}   "
              f"{ratios[0]:>7s} {ratios[1]:>8s} {ratios[2]:>7s}   {r['version']}")
    print("start-up: launch to the end of round 1 less one median round (fedgmi-mpi's also holds its exit: an upper "
          "bound); peak: largest sum of RSS over the process tree")


if __name__ == "__main__":
    main()
