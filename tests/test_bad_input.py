"""The catalogue of bad input (docs/bad-input.md): each case ends with one line on stderr, exit
code 2, nothing written, and every file already in the folder unchanged (checked by hash)."""
import hashlib
import os
import pickle
import subprocess
import sys

import h5py
import numpy as np
import pytest

from conftest import MPI_TIMEOUT, REPO, run_cli, small_args


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _npz(folder, name, **arrays):
    path = folder / name
    np.savez(path, **arrays)
    return str(path)


def _good(n=40):
    rng = np.random.default_rng(0)
    return {"x": rng.random((n, 16)).astype(np.float32), "y": rng.integers(0, 3, n), "client": np.repeat([0, 1], n // 2)}


def _with(**changes):
    arrays = _good()
    arrays.update(changes)
    return {k: v for k, v in arrays.items() if v is not None}


def _npz_run(name, **arrays):
    return lambda d: ["run", "--set", "scenario.name=npz", "--set", f"scenario.path={_npz(d, name, **arrays)}",
                      "--set", "scenario.unseen_clients=0", "--out", str(d / "out.h5")]


def _file(name, content: bytes):
    def make(d):
        (d / name).write_bytes(content)
        return str(d / name)
    return make


def _set(*items):
    return lambda d: ["run", *[a for item in items for a in ("--set", item)], "--out", str(d / "out.h5")]


def _existing_output(d):
    (d / "out.h5").write_bytes(b"an earlier log")
    return ["run", *small_args(), "--out", str(d / "out.h5")]


def _existing_output_auto(d):  # refused before the rounds that choose K, not after them
    (d / "out.h5").write_bytes(b"an earlier log")
    return ["run", *small_args("algorithm.num_components=auto"), "--out", str(d / "out.h5")]


def _existing_partial(d):
    (d / "out.h5.partial").write_bytes(b"a run that died")
    return ["run", *small_args(), "--out", str(d / "out.h5")]


def _unwritable(d):
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere: an unwritable folder cannot be made here")
    locked = d / "locked"
    locked.mkdir(mode=0o500)
    return ["run", *small_args(), "--out", str(locked / "out.h5")]


def _config_file(text):
    return lambda d: ["run", _file("bad.yaml", text.encode())(d), "--out", str(d / "out.h5")]


def _not_our_log(d):
    with h5py.File(d / "other.h5", "w") as f:
        f["data"] = np.arange(3)
    return ["analyze", str(d / "other.h5")]


def _pickled(d):
    path = d / "pickled.npz"
    np.savez(path, x=np.array([{"evil": 1}], dtype=object), y=np.zeros(1, int), client=np.zeros(1, int))
    return ["run", "--set", "scenario.name=npz", "--set", f"scenario.path={path}", "--out", str(d / "out.h5")]


def _truncated_zip(d):
    path = _npz(d, "cut.npz", **_good())
    with open(path, "rb") as handle:
        head = handle.read(200)
    (d / "cut.npz").write_bytes(head)
    return ["run", "--set", "scenario.name=npz", "--set", f"scenario.path={path}", "--out", str(d / "out.h5")]


def _interrupted(d, *extra):
    """A run that died in its 4th training round (communication round 28), leaving its log and
    its checkpoint of round 27; returns the arguments that resume it."""
    args = ["run", *small_args("runtime.checkpoint_every=1", *extra), "--out", str(d / "out.h5")]
    env = dict(os.environ, PYTHONPATH=str(REPO), FEDGMI_FAULT="raise:0:28")
    died = subprocess.run([sys.executable, "-m", "fedgmi_mpi", *args], capture_output=True, text=True, env=env,
                          timeout=MPI_TIMEOUT, cwd=REPO)
    assert died.returncode == 1 and (d / "out.h5.checkpoint").is_file(), died.stderr
    return [*args, "--resume"]


def _resume_other_config(d):
    args = _interrupted(d)
    return [*args, "--set", "seed=1", "--set", "algorithm.lr=0.01"]


def _truncated_checkpoint(d):
    args = _interrupted(d)
    checkpoint = d / "out.h5.checkpoint"
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    return args


def _checkpoint_naming_a_foreign_class(d):
    """A crafted checkpoint that asks for a class outside the package (what a pickle would run)."""
    args = _interrupted(d)
    with h5py.File(d / "out.h5.checkpoint", "r+") as f:
        f["server_state"].attrs["type"] = "os:system"
    return args


def _pickle_as_checkpoint(d):
    (d / "out.h5.partial").write_bytes(b"a run that died")
    (d / "out.h5.checkpoint").write_bytes(pickle.dumps({"params": np.zeros(3)}))
    return ["run", *small_args(), "--out", str(d / "out.h5"), "--resume"]


def _resume_without_log(d):
    args = _interrupted(d)
    (d / "out.h5.partial").unlink()
    return args


def _resume_complete(d):
    (d / "out.h5").write_bytes(b"a finished log")
    return ["run", *small_args(), "--out", str(d / "out.h5"), "--resume"]


def _existing_checkpoint(d):
    (d / "out.h5.checkpoint").write_bytes(b"a run that can continue")
    return ["run", *small_args(), "--out", str(d / "out.h5")]


def _infer_on(d, arrays):
    return ["infer", "--log", str(d / "none.h5"), "--data", _npz(d, "new.npz", **arrays)]


# (id, how to build the command in a folder, a fragment of the one line it must print)
CASES = [
    ("unknown key, suggested", _set("algorithm.round=5"), "did you mean 'algorithm.rounds'?"),
    ("key in the wrong section", _set("scenario.rounds=5"), "did you mean 'algorithm.rounds'?"),
    ("wrong type", _set("algorithm.rounds=ten"), "algorithm.rounds: expected an integer"),
    ("wrong boolean", _set("runtime.batched=maybe"), "expected true or false"),
    ("out of range", _set("scenario.dirichlet_alpha=-1"), "scenario.dirichlet_alpha must be > 0"),
    ("unknown algorithm", _set("algorithm.name=fedsgd"), "algorithm.name must be one of"),
    ("unknown compression", _set("compression.uplink=zip"), "compression.uplink must be auto or one of"),
    ("impossible budget", _set("compression.uplink_bits=0.00001"), "the smallest budget that works is"),
    ("unknown scenario", _set("scenario.name=cifar"), "scenario.name must be one of"),
    ("K to fit not a number", _set("algorithm.num_components=lots"), "algorithm.num_components must be scenario, auto"),
    ("another K for a baseline", _set("algorithm.name=ifca", "algorithm.num_components=3"), "needs algorithm.name in fedgmi"),
    ("K range upside down", _set("algorithm.num_components=auto", "algorithm.auto_min_components=5",
                                 "algorithm.auto_max_components=2"), "auto_min_components and auto_max_components"),
    ("K beyond the data", _set("scenario.num_components=6"), "must be 1..4 for rotated_digits"),
    ("label group beyond the classes", _set("scenario.name=label_groups", "scenario.components=0,1; 10,11",
                                            "scenario.num_components=2"), "classes must lie in 0..9"),
    ("synthetic data, Bernoulli model", _set("scenario.name=synthetic", "scenario.num_components=3"),
     "set model.likelihood=gaussian"),
    ("relabel beyond the classes", _set("scenario.name=transforms", "scenario.components=identity; relabel(1,2,3,4,5,6,7,8,9,10)",
                                        "scenario.num_components=2"), "relabel must list 10 labels in 0..9"),
    ("unknown transform", _set("scenario.name=transforms", "scenario.components=identity; twist(3)",
                               "scenario.num_components=2"), "unknown transform"),
    ("--set without =", lambda d: ["run", "--set", "algorithm.rounds", "--out", str(d / "out.h5")], "--set expects key=value"),
    ("missing config file", lambda d: ["run", str(d / "nope.yaml"), "--out", str(d / "out.h5")], "config file not found"),
    ("config not YAML", _config_file("algorithm: [rounds: 3"), "is not valid YAML"),
    ("config not a mapping", _config_file("- 1\n- 2\n"), "must hold a mapping of sections"),
    ("missing data file", _set("scenario.name=npz", "scenario.path=/nonexistent/data.npz"), "data file not found"),
    ("data not an npz", lambda d: ["run", "--set", "scenario.name=npz", "--set",
                                   f"scenario.path={_file('x.npz', b'plain text')(d)}", "--out", str(d / "out.h5")],
     "not a zip archive"),
    ("truncated npz", _truncated_zip, "not a zip archive"),
    ("pickled object array", _pickled, "cannot be read without pickle"),
    ("missing array", _npz_run("no_y.npz", **_with(y=None)), "missing array 'y'"),
    ("x of the wrong shape", _npz_run("flat.npz", **_with(x=np.zeros(40, np.float32))), "x must be a 2-D numeric array"),
    ("x out of range", _npz_run("range.npz", **_with(x=np.full((40, 16), 3.0, np.float32))), "scaled to [0, 1]"),
    ("NaN in x", _npz_run("nan.npz", **_with(x=np.full((40, 16), np.nan, np.float32))), "x holds 640 NaN or infinite values"),
    ("negative labels", _npz_run("neg.npz", **_with(y=-np.ones(40, int))), "y must hold non-negative integers"),
    ("labels of the wrong dtype", _npz_run("float_y.npz", **_with(y=np.zeros(40))), "y must hold non-negative integers"),
    ("client without test samples", _npz_run("notest.npz", **_with(test=np.zeros(40, bool))),
     "needs at least one training and one test sample"),
    ("existing output", _existing_output, "exists; pass --overwrite"),
    ("existing output, K from the data", _existing_output_auto, "exists; pass --overwrite"),
    ("existing .partial", _existing_partial, "a run that did not finish?"),
    ("unwritable folder", _unwritable, "is not writable"),
    ("--resume with no checkpoint", lambda d: ["run", *small_args(), "--out", str(d / "out.h5"), "--resume"],
     "no checkpoint"),
    ("--resume of a complete run", _resume_complete, "is complete: nothing to resume"),
    ("--resume with --overwrite", lambda d: ["run", "--out", str(d / "out.h5"), "--resume", "--overwrite"], "choose one"),
    ("--force without --resume", lambda d: ["run", "--out", str(d / "out.h5"), "--force"], "only applies with --resume"),
    ("existing checkpoint, no --resume", _existing_checkpoint, "a run that can continue: add --resume"),
    ("checkpoint of another config", _resume_other_config,
     "belongs to another config: algorithm.lr (checkpoint 0.003, now 0.01); seed (checkpoint 0, now 1); pass --force"),
    ("truncated checkpoint", _truncated_checkpoint, "is not a readable checkpoint (truncated or corrupt?)"),
    ("pickle given as a checkpoint", _pickle_as_checkpoint, "is not a checkpoint (not an HDF5 file"),
    ("checkpoint naming a class outside the package", _checkpoint_naming_a_foreign_class,
     "names a class outside fedgmi_mpi's server states (os:system)"),
    ("checkpoint without its log", _resume_without_log, "out.h5.partial that the checkpoint"),
    ("negative checkpoint interval", _set("runtime.checkpoint_every=-5"), "runtime.checkpoint_every must be >= 0"),
    ("negative round timeout", _set("runtime.round_timeout_s=-1"), "runtime.round_timeout_s must be >= 0"),
    ("M-step prior power out of range", _set("algorithm.mstep_prior_power=-1"),
     "algorithm.mstep_prior_power must be in [0, 16]"),
    ("aggregation power below 1", _set("algorithm.aggregation_power=0.5"),
     "algorithm.aggregation_power must be in [1, 16]"),
    ("training seed below -1", _set("training_seed=-2"), "training_seed must be >= 0, or -1 for the same as seed"),
    ("missing output folder", lambda d: ["run", *small_args(), "--out", str(d / "no" / "out.h5")], "does not exist"),
    ("analysis of a file that is not ours", _not_our_log, "is not a fedgmi run log"),
    ("analysis of a missing log", lambda d: ["analyze", str(d / "gone.h5")], "no log at"),
    ("infer without a log", lambda d: _infer_on(d, _good()), "no log at"),
    ("export over an existing file", lambda d: ["export-scenario", "--out", _file("keep.npz", b"mine")(d)], "exists"),
]


@pytest.mark.parametrize("case,command,fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, case, command, fragment):
    args = command(tmp_path)
    before = _digest(tmp_path)
    result = run_cli(args)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (case, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], (case, result.stderr)
    assert _digest(tmp_path) == before, case  # nothing new, nothing changed


def test_the_catalogue_is_long_enough():
    assert len(CASES) >= 25  # the issue asks for at least 25
