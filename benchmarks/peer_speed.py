"""The same FedAvg workload in a bare loop, Flower, apple's pfl and fedgmi-mpi; prints one table.

  .venv/bin/python benchmarks/peer_speed.py [--runs 3] [--peers-python /work/peers-venv/bin/python]
                                            [--only bare,flower,pfl,fedgmi] [--flower-cpus 2]

Workload: MLP 64-128-128-10 (ReLU); 40 clients x 100 load_digits samples (features / 16) drawn with
replacement (numpy seed 0); per round every client runs one epoch of plain SGD (lr 0.05, batch 20,
in order: 5 steps) from the global model, then FedAvg weighted by sample count; 10 rounds; 1 torch
thread per process. Test accuracy at the end on 400 held-out digits (the same for all four).

Per framework, --runs launches of a fresh process (tree): median over runs of the median seconds
per round; start-up = launch to the start of round 1; peak memory = the largest sum of RSS over the
whole process tree (polled from /proc every 50 ms). Flower and pfl run under --peers-python (install
them into a separate venv: pip install torch==2.13.0 'flwr[simulation]' pfl scikit-learn psutil);
the file runs itself there as `peer_speed.py --worker NAME`. Asserts nothing.
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
PAGE = os.sysconf("SC_PAGE_SIZE")
Data = tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray, np.ndarray]


# ---- the workload (shared by every worker) -------------------------------------------------
def make_data() -> Data:
    """40 clients' (x, y) and the common test set (x, y), from load_digits with a fixed seed."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = (digits.data / 16).astype(np.float32), digits.target.astype(np.int64)
    rng = np.random.default_rng(SEED)
    order = rng.permutation(len(x))
    test, pool = order[:CLIENTS * TEST_PER_CLIENT], order[CLIENTS * TEST_PER_CLIENT:]
    clients = [(x[i], y[i]) for i in (rng.choice(pool, SAMPLES, replace=True) for _ in range(CLIENTS))]
    return clients, x[test], y[test]


def make_model() -> Any:
    """The MLP, seeded; with the loss() and metrics() that pfl asks of a torch module."""
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
    # The initial model fedgmi-mpi draws for seed 0 (fedgmi_mpi/rng.py torch_generator(seed, SERVER=3, 0),
    # then U(+-1/sqrt(fan_in)) per layer, weights [in, out] then bias): 50 SGD steps leave accuracy very
    # dependent on the start (0.21-0.59 over seeds), so all four start from the same one.
    state = np.random.SeedSequence([SEED, 3, 0]).generate_state(1, dtype=np.uint64)[0]
    gen = torch.Generator().manual_seed(int(state & 0x7FFF_FFFF_FFFF_FFFF))
    with torch.no_grad():
        for layer in model[::2]:
            fan_in, fan_out = layer.in_features, layer.out_features
            layer.weight.copy_(((torch.rand(fan_in, fan_out, generator=gen) * 2 - 1) / fan_in ** 0.5).T)
            layer.bias.copy_((torch.rand(fan_out, generator=gen) * 2 - 1) / fan_in ** 0.5)
    return model


def local_train(model: Any, x: Any, y: Any) -> None:
    """One epoch of plain SGD, in-order batches."""
    import torch

    opt = torch.optim.SGD(model.parameters(), lr=LR)
    for i in range(0, len(x), BATCH):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[i:i + BATCH]), y[i:i + BATCH]).backward()
        opt.step()


def test_accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    import torch

    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def report(round_starts: list[float], end: float, accuracy: float, version: str) -> None:
    """A worker's one result line: wall-clock start of each round (+ the end of the last)."""
    stamps = [*round_starts, end]
    print("RESULT " + json.dumps({"first_round_at": stamps[0], "round_s": list(np.diff(stamps)),
                                  "accuracy": accuracy, "version": version}), flush=True)


# ---- workers (each runs in its own process) ------------------------------------------------
def worker_bare() -> None:
    import torch

    clients, x_test, y_test = make_data()
    clients = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in clients]
    model = make_model()
    global_params = [p.detach().clone() for p in model.parameters()]
    starts = []
    for _ in range(ROUNDS):
        starts.append(time.time())
        total, weight = [torch.zeros_like(p) for p in global_params], 0
        for x, y in clients:
            with torch.no_grad():
                for p, g in zip(model.parameters(), global_params):
                    p.copy_(g)
            local_train(model, x, y)
            with torch.no_grad():
                for t, p in zip(total, model.parameters()):
                    t.add_(p, alpha=len(x))
            weight += len(x)
        global_params = [t / weight for t in total]
    end = time.time()
    with torch.no_grad():
        for p, g in zip(model.parameters(), global_params):
            p.copy_(g)
    report(starts, end, test_accuracy(model, x_test, y_test), f"torch {torch.__version__}")


def worker_flower(cpus_per_client: float) -> None:
    """Flower's Message API (ClientApp/ServerApp, FedAvg strategy) under run_simulation (Ray)."""
    import flwr
    import torch
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    cache: dict[str, Any] = {}  # per Ray actor process: the data and one model, built once

    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        if not cache:
            torch.set_num_threads(1)
            cache["clients"], cache["model"] = make_data()[0], make_model()
        x, y = cache["clients"][int(context.node_config["partition-id"])]
        model = cache["model"]
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        local_train(model, torch.from_numpy(x), torch.from_numpy(y))
        content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                              "metrics": MetricRecord({"num-examples": len(x)})})
        return Message(content=content, reply_to=msg)

    starts: list[float] = []
    final: dict[str, Any] = {}

    class TimedFedAvg(FedAvg):
        def configure_train(self, server_round: int, *args: Any, **kwargs: Any) -> Any:
            starts.append(time.time())
            return super().configure_train(server_round, *args, **kwargs)

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = TimedFedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=CLIENTS,
                               min_available_nodes=CLIENTS)
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord(make_model().state_dict()), num_rounds=ROUNDS)
        final["end"], final["arrays"] = time.time(), result.arrays

    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=CLIENTS, backend_config={
        "client_resources": {"num_cpus": cpus_per_client, "num_gpus": 0.0},
        "init_args": {"num_cpus": 2, "logging_level": "error", "log_to_driver": False}})
    model = make_model()
    model.load_state_dict(final["arrays"].to_torch_state_dict())
    _, x_test, y_test = make_data()
    report(starts, final["end"], test_accuracy(model, x_test, y_test),
           f"flwr {flwr.__version__}, ray {__import__('ray').__version__}, {cpus_per_client:g} CPU/client")


def worker_pfl() -> None:
    """pfl's PyTorch FedAvg on SimulatedBackend (one process), as in its tutorials/benchmarks."""
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

    def federated() -> FederatedDataset:  # every user once per round: cohort 40, minimize_reuse
        return FederatedDataset(lambda uid: Dataset(raw_data=tensors[uid], user_id=uid),
                                get_user_sampler("minimize_reuse", list(range(CLIENTS))))

    starts: list[float] = []

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
    backend = SimulatedBackend(training_data=federated(), val_data=federated(),
                               postprocessors=[WeightByDatapoints()])
    FederatedAveraging().run(
        algorithm_params=NNAlgorithmParams(central_num_iterations=ROUNDS, evaluation_frequency=ROUNDS,
                                           train_cohort_size=CLIENTS, val_cohort_size=0),
        backend=backend, model=model,
        model_train_params=NNTrainHyperParams(local_learning_rate=LR, local_num_epochs=1, local_batch_size=BATCH),
        model_eval_params=NNEvalHyperParams(local_batch_size=None), callbacks=[Timer()])
    report(starts[:-1], starts[-1], test_accuracy(module, x_test, y_test), f"pfl {pfl.__version__}")


# ---- the parent: launch, poll memory, collect ----------------------------------------------
def tree_rss(root: int) -> int:
    """Sum of RSS (bytes) of root and all its descendants (/proc/PID/task/TID/children)."""
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
            for tid in os.listdir(f"/proc/{pid}/task"):
                stack += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except (OSError, ValueError):  # the process or thread has just gone
            pass
    return total


def launch(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, int, str, str]:
    """Run cmd, polling its process tree's RSS: (launch time, exit time, peak bytes, stdout, stderr)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.time()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=REPO, env={**os.environ, **(env or {})})
        peak = 0
        while proc.poll() is None:
            peak = max(peak, tree_rss(proc.pid))
            time.sleep(0.05)
        ended = time.time()
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: " + (stderr.strip().splitlines() or ["(no stderr)"])[-1][:300])
    return started, ended, peak, stdout, stderr


def run_worker(python: str, name: str, extra: list[str]) -> dict[str, Any]:
    env = {"OMP_NUM_THREADS": "1", "FLWR_TELEMETRY_ENABLED": "0", "RAY_DEDUP_LOGS": "0"}
    started, _, peak, stdout, _ = launch([python, str(Path(__file__).resolve()), "--worker", name, *extra], env)
    line = [s for s in stdout.splitlines() if s.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT "):])
    return {"per_round": float(np.median(result["round_s"])), "startup": result["first_round_at"] - started,
            "peak": peak, "accuracy": result["accuracy"], "version": result["version"]}


def run_fedgmi(python: str, folder: Path) -> dict[str, Any]:
    """fedgmi-mpi's FedAvg on the same data, as a user npz; figures from its HDF5 log."""
    import h5py

    clients, x_test, y_test = make_data()
    data = folder / "peer_workload.npz"
    if not data.exists():  # 40 clients' 100 training samples each + 10 of the common test set each
        tests = np.split(np.arange(len(x_test)), CLIENTS)
        np.savez(data, x=np.concatenate([np.concatenate([x, x_test[t]]) for (x, _), t in zip(clients, tests)]),
                 y=np.concatenate([np.concatenate([y, y_test[t]]) for (_, y), t in zip(clients, tests)]),
                 client=np.repeat(np.arange(CLIENTS), SAMPLES + TEST_PER_CLIENT),
                 test=np.tile(np.r_[np.zeros(SAMPLES, bool), np.ones(TEST_PER_CLIENT, bool)], CLIENTS))
    out = folder / f"fedgmi-{time.time_ns()}.h5"
    sets = [f"seed={SEED}", "scenario.name=npz", f"scenario.path={data}", "scenario.unseen_clients=0",
            "scenario.num_components=1", "model.hidden=128", "algorithm.name=fedavg", "algorithm.optimizer=sgd",
            f"algorithm.lr={LR}", f"algorithm.batch_size={BATCH}", "algorithm.local_epochs=1",
            "algorithm.shuffle=false", f"algorithm.rounds={ROUNDS}", "algorithm.eval_every=0",
            "runtime.threads_per_rank=1"]
    cmd = [str(Path(python).parent / "mpiexec"), "-n", "3", python, "-m", "mpi4py", "-m", "fedgmi_mpi", "run",
           "--quiet", "--out", str(out), *[a for s in sets for a in ("--set", s)]]
    started, ended, peak, _, _ = launch(cmd, {"OMP_NUM_THREADS": "1"})
    with h5py.File(out, "r") as f:
        phases = json.loads(f["rounds/phase"].attrs["phases"])
        train = f["rounds/phase"][()] == phases.index("train")
        summary = json.loads(f.attrs["summary"])
        per_round = float(np.median(f["rounds/wall_time"][()][train]))
        versions = json.loads(f.attrs["versions"]) if "versions" in f.attrs else {}
    # The loop's own clock (summary wall_time_s) starts just before round 1: the rest is start-up
    # plus MPI finalize and exit, so this start-up is an upper bound.
    return {"per_round": per_round, "startup": ended - started - summary["wall_time_s"], "peak": peak,
            "accuracy": summary["accuracy"], "version": f"fedgmi-mpi, torch {versions.get('torch', '?')}, 3 ranks"}


def measure(label: str, once: Callable[[], dict[str, Any]], runs: int) -> dict[str, Any] | str:
    results = []
    for i in range(runs):
        try:
            results.append(once())
        except Exception as exc:  # one framework failing must not cost the others' rows
            return f"failed: {type(exc).__name__}: {exc}"
        print(f"  {label} run {i + 1}/{runs}: {results[-1]['per_round']:.4f} s/round, start-up "
              f"{results[-1]['startup']:.1f} s, peak {results[-1]['peak'] / 2**20:.0f} MiB", file=sys.stderr, flush=True)
    return {"per_round": statistics.median(r["per_round"] for r in results),
            "startup": statistics.median(r["startup"] for r in results), "peak": max(r["peak"] for r in results),
            "accuracy": results[-1]["accuracy"], "version": results[-1]["version"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", choices=["bare", "flower", "pfl"], help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--peers-python", default=str(PEERS_PYTHON) if PEERS_PYTHON.exists() else "")
    parser.add_argument("--fedgmi-python", default=str(REPO / ".venv/bin/python"))
    parser.add_argument("--flower-cpus", type=float, default=1.0, help="Ray CPUs per Flower client (1: 2 actors)")
    parser.add_argument("--only", default="bare,flower,pfl,fedgmi")
    args = parser.parse_args()
    if args.worker:
        try:
            import torch
            torch.set_num_threads(1)
            worker = {"bare": worker_bare, "pfl": worker_pfl, "flower": lambda: worker_flower(args.flower_cpus)}
            worker[args.worker]()
        except ImportError as exc:
            sys.exit(f"{args.worker} not importable here ({sys.executable}): {exc}")
        return

    folder = Path(tempfile.mkdtemp(prefix="peer_speed_"))
    rows: dict[str, dict[str, Any] | str] = {}
    wanted = args.only.split(",")
    for name, label in (("bare", "bare loop"), ("pfl", "pfl"), ("flower", "Flower"), ("fedgmi", "fedgmi-mpi")):
        if name not in wanted:
            continue
        if name in ("flower", "pfl") and not (args.peers_python and Path(args.peers_python).exists()):
            rows[label] = f"skipped: no peers interpreter (--peers-python {args.peers_python or 'unset'})"
            continue
        python = {"bare": sys.executable, "fedgmi": args.fedgmi_python}.get(name, args.peers_python)
        extra = ["--flower-cpus", str(args.flower_cpus)] if name == "flower" else []
        once = (lambda: run_fedgmi(python, folder)) if name == "fedgmi" else (lambda: run_worker(python, name, extra))
        rows[label] = measure(label, once, args.runs)

    ref = rows.get("fedgmi-mpi") if isinstance(rows.get("fedgmi-mpi"), dict) else None
    ratio = (lambda r, key: f"{r[key] / ref[key]:6.2f}x") if ref else (lambda r, key: "    n/a")
    print(f"\nFedAvg, MLP 64-128-128-10, {CLIENTS} clients x {SAMPLES} digits, {ROUNDS} rounds; median of "
          f"{args.runs} runs; ratios = this / fedgmi-mpi (above 1: fedgmi-mpi is faster / smaller)")
    print(f"{'framework':12s} {'s/round':>8s} {'start-up s':>10s} {'peak MiB':>9s} {'test acc':>8s}   "
          f"{'s/round':>7s} {'start-up':>8s} {'memory':>7s}   version")
    for label, r in rows.items():
        if isinstance(r, str):
            print(f"{label:12s} {r}")
            continue
        print(f"{label:12s} {r['per_round']:8.4f} {r['startup']:10.2f} {r['peak'] / 2**20:9.0f} {r['accuracy']:8.4f}   "
              f"{ratio(r, 'per_round'):>7s} {ratio(r, 'startup'):>8s} {ratio(r, 'peak'):>7s}   {r['version']}")
    print("start-up: launch to round 1 (fedgmi-mpi: launch to exit minus the loop's wall time, an upper bound); "
          "peak: largest sum of RSS over the process tree")


if __name__ == "__main__":
    main()
