"""Run configuration: plain dataclasses, read from YAML and ``--set section.key=value`` overrides.

Every value is checked before any work starts; a bad one raises UserError with one line that
names the key, so the CLI can exit 2 on every rank before any collective is entered.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError

# The compression methods (fedgmi_mpi/compression); listed here so the config can be checked
# without importing torch.
COMPRESSION_METHODS = ("none", "fp16", "bf16", "qsgd", "hadamard", "topk", "randk")


SCENARIOS = ("rotated_digits", "npz", "transforms", "label_groups", "sources", "synthetic")


@dataclass
class ScenarioConfig:
    # rotated_digits (the default) | npz (a user's file, docs/data.md) | transforms | label_groups |
    # sources | synthetic (docs/scenarios.md)
    name: str = "rotated_digits"
    path: str = ""  # npz file for name=npz
    num_clients: int = 40  # clients that train
    unseen_clients: int = 8  # extra clients that never train, only run E-steps
    num_components: int = 4  # K inherent distributions (rotations for rotated_digits)
    samples_per_client: int = 100  # mean training samples per client
    size_spread: float = 0.25  # client sizes uniform in samples_per_client * (1 ± size_spread)
    test_samples_per_client: int = 50
    dirichlet_alpha: float = 0.4
    base: str = "digits"  # transforms, label_groups: the base data set: digits | idx:IMAGES,LABELS | npz:FILE | hdf5:FILE
    components: str = ""  # transforms: chains per component; label_groups: classes per component; sources: file specs
    sizes: str = "uniform"  # training samples per client: uniform (samples_per_client * (1 ± size_spread)), fixed, lognormal
    size_sigma: float = 0.5  # lognormal sizes: standard deviation of the log size (mean samples_per_client)
    proportions_path: str = ""  # a .npy or .csv [all clients, K] of proportions instead of Dirichlet draws
    test_fraction: float = 0.2  # share of each base data set held out as the test pool, before any transform
    synthetic_dim: int = 16  # synthetic: dimensions of the real-valued features
    synthetic_modes: int = 3  # synthetic: Gaussian modes per component (the labels)
    synthetic_separation: float = 4.0  # synthetic: standard deviation of the mode means


@dataclass
class ModelConfig:
    hidden: int = 128
    latent: int = 8
    architecture: str = "mlp"  # FedGMI's VAEs: mlp, or conv (images with height and width divisible by 4)
    likelihood: str = "bernoulli"  # bernoulli (features in [0, 1]) or gaussian (real-valued); one for all K components
    channels: int = 32  # conv: channels of the first convolution (the second has twice as many)


@dataclass
class AlgorithmConfig:
    name: str = "fedgmi"  # fedgmi | oracle | local | fedavg | fedprox | ifca | fedem | fedgmm
    # K the algorithm fits: "scenario" (the scenario's num_components), a number (fedgmi), or "auto":
    # chosen from the data before training, from auto_min_components to auto_max_components (docs/algorithm.md)
    num_components: str = "scenario"
    auto_min_components: int = 1
    auto_max_components: int = 8
    rounds: int = 150  # training rounds (model down, updates up)
    warmup_rounds: int = 40  # first rounds train on the initial responsibilities, no E-step (all rounds if >= rounds)
    local_epochs: int = 2
    batch_size: int = 50
    lr: float = 3e-3
    optimizer: str = "adam"  # classifier baselines' local optimiser: adam (fresh every round) or sgd; FedGMI: adam
    shuffle: bool = True  # each client shuffles its samples every epoch (false: in order)
    prox_mu: float = 0.01  # fedprox: weight of the proximal term (mu / 2) ||w - w_global||^2
    label_weight: float = 1.0  # weight of the classifier head's cross-entropy in the M-step
    estep_samples: int = 16  # importance samples for the training E-step likelihoods
    # importance samples of the bound the M-step maximises: 1 is the ELBO; 4 (the importance-weighted
    # bound) gives sharper densities, lower MAE on every family (docs/algorithm.md) for ~1.2x the time
    mstep_samples: int = 4
    estep_uses_labels: bool = True  # multiply p_k(x_i) by p_k(y_i | x_i) in the training E-step
    # the same in the evaluation's E-step on every client's (labelled) training samples, seen and unseen:
    # proportions of labelled data. Off, the evaluation is what a client with unlabelled samples gets.
    eval_uses_labels: bool = False
    proportion_iterations: int = 20  # EM iterations on pi per E-step, likelihoods held fixed
    # The M-step trains component k on w_ik ∝ pi_ck^gamma [p_k(x_i) p_k(y_i|x_i)]^beta; the proportions,
    # assignments and scores stay the plain responsibilities (gamma = beta = 1). beta < 1 (tempering)
    # damps the feedback that makes one component take over its twin's ambiguous samples (the drift,
    # docs/algorithm.md), for the first mstep_tempering_rounds E-step rounds (-1: all). gamma > 1 lets a
    # client's proportions decide its ambiguous samples instead: it holds a short recipe better but
    # costs mixtures whose components truly overlap (synthetic), so it is an option, not the default.
    mstep_tempering: float = 0.5
    mstep_tempering_rounds: int = 60
    mstep_prior_power: float = 1.0
    # The server moves component k by the mean of the clients' updates weighted by sum_i w_ik^power:
    # above 1, clients that hold the component confidently count more than clients holding blends of
    # it and its twin (docs/algorithm.md, "The server's weights"); 1 weights by responsibility mass.
    aggregation_power: float = 4.0
    init: str = "topics"  # "topics" (codebook + federated topic model) or "random"
    codebook_size: int = 64
    codebook_lloyd_iterations: int = 6
    topic_restarts: int = 8
    topic_iterations: int = 300
    test_samples: int = 4  # importance samples for the per-round test accuracy
    clients_per_round: int = 0  # the cohort: seen clients drawn for each training round (0: all of them)
    eval_every: int = 25  # an evaluation round every this many training rounds (0: only at the end)
    eval_clients: int = 0  # clients (seen and unseen) that run inference at evaluation rounds, a fixed draw (0: all)
    eval_samples: int = 64  # importance samples for evaluation-round inference
    collapse_fraction: float = 0.01  # warn when a component's share of all responsibility mass falls below this


@dataclass
class CompressionConfig:
    # Budgets in bits per parameter of the whole model per training round; 32 = dense (float32 model,
    # weights on top). Below 32: a hard cap on each client's upload / each broadcast, everything included.
    uplink_bits: float = 32.0
    downlink_bits: float = 32.0
    uplink: str = "auto"  # auto | none | fp16 | bf16 | qsgd | hadamard | topk | randk
    downlink: str = "auto"
    error_feedback: str = "auto"  # uplink residuals: auto (on for biased methods: topk) | on | off
    select_components: bool = True  # under a cap: skip components below selection_threshold, split the rest by mass
    selection_threshold: float = 0.02  # share of a client's responsibility mass below which a component is not sent
    value_bits: int = 8  # bits per value for topk and randk (1, 2, 4, 8, 16 or 32)
    residual_dtype: str = "float16"  # storage of error-feedback residuals (float16 or float32)


@dataclass
class RuntimeConfig:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads_per_rank: int = 1  # torch intra-op threads per rank (0: torch's default)
    poll_interval_ms: float = 1.0  # longest sleep between progress checks while a rank waits in a collective
    batched: bool = True  # a rank runs its clients of a round as batched groups (false: one at a time, the reference)
    group_size: int = 0  # clients per batched group (0: automatic, from the device's free memory)
    checkpoint_every: int = 25  # training rounds between checkpoints (<out>.checkpoint; 0: none but a stop signal's)
    round_timeout_s: float = 600.0  # a rank waiting longer in one collective ends the job (a stalled rank; 0: never)


@dataclass
class Config:
    seed: int = 0
    # the seed of training's randomness (initialisation, E-step noise, cohorts, compression);
    # -1: the same as ``seed``, which also makes the scenario. Another value retrains on the
    # same data from another start (restarts).
    training_seed: int = -1
    scenario: ScenarioConfig = field(default_factory=ScenarioConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def run_seed(self) -> int:
        """The seed of training's random streams (``training_seed``, or ``seed`` when -1)."""
        return self.seed if self.training_seed < 0 else self.training_seed

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def _coerce(key: str, value: Any, target_type: type) -> Any:
    if target_type is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise UserError(f"{key}: expected true or false, got {value!r}")
    if target_type in (int, float):
        expected = "an integer" if target_type is int else "a number"
        acceptable = (int, str) if target_type is int else (int, float, str)
        if isinstance(value, acceptable) and not isinstance(value, bool):
            try:
                return target_type(value)
            except ValueError:
                pass
        raise UserError(f"{key}: expected {expected}, got {value!r}")
    if target_type is str:
        if isinstance(value, bool) and key.endswith("error_feedback"):  # YAML reads on/off as booleans
            return "on" if value else "off"
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise UserError(f"{key}: expected a string, got {value!r}")
    raise AssertionError(target_type)


_SCALARS = {"int": int, "float": float, "str": str, "bool": bool}


def _field_types(obj: Any) -> dict[str, type]:
    """Scalar fields of a config section (annotations are strings under postponed evaluation)."""
    return {f.name: _SCALARS[f.type] for f in dataclasses.fields(obj) if f.type in _SCALARS}


def known_keys(config: Config | None = None) -> list[str]:
    """Every settable key, e.g. "algorithm.rounds" and "seed"."""
    config = config or Config()
    keys = [f.name for f in dataclasses.fields(config) if f.type in _SCALARS]
    for section in dataclasses.fields(config):
        value = getattr(config, section.name)
        if dataclasses.is_dataclass(value):
            keys += [f"{section.name}.{name}" for name in _field_types(value)]
    return keys


def _unknown_key(key: str) -> str:
    """The error for a key that does not exist, with the nearest real one: the same name in
    another section (scenario.rounds -> algorithm.rounds), a typo of a field of the same section,
    or a typo of the whole key."""
    import difflib

    keys = known_keys()
    section, _, name = key.rpartition(".")
    guesses = [k for k in keys if k.rpartition(".")[2] == name]
    if not guesses:
        fields = [k.rpartition(".")[2] for k in keys if k.rpartition(".")[0] == section]
        guesses = [f"{section}.{f}" if section else f for f in difflib.get_close_matches(name, fields, n=1, cutoff=0.75)]
    if not guesses:
        guesses = difflib.get_close_matches(key, keys, n=1, cutoff=0.85)
    return f"unknown config key {key!r}" + (f"; did you mean {guesses[0]!r}?" if guesses else "")


def apply(config: Config, key: str, value: Any) -> None:
    """Set ``section.key`` (or a top-level key such as ``seed``) with type checking."""
    parts = key.split(".")
    target: Any = config
    for part in parts[:-1]:
        if not dataclasses.is_dataclass(target) or part not in {f.name for f in dataclasses.fields(target)}:
            raise UserError(_unknown_key(key))
        target = getattr(target, part)
        if not dataclasses.is_dataclass(target):
            raise UserError(_unknown_key(key))
    name = parts[-1]
    types = _field_types(target)
    if name not in types:
        raise UserError(_unknown_key(key))
    setattr(target, name, _coerce(key, value, types[name]))


def _flatten(mapping: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for key, value in mapping.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict):
            out += _flatten(value, full + ".")
        else:
            out.append((full, value))
    return out


def from_mapping(data: dict[str, Any], unknown: list[str] | None = None) -> Config:
    """A config from its nested mapping, e.g. the JSON a run log keeps in its ``config`` attr.
    With ``unknown`` (a list), keys this version does not know (an older log's) are put there
    and left out instead of refused."""
    config, known = Config(), set(known_keys())
    for key, value in _flatten(data):
        if unknown is not None and key not in known:
            unknown.append(key)
            continue
        apply(config, key, value)
    validate(config)
    return config


def load(path: str | None = None, overrides: tuple[str, ...] | list[str] = ()) -> Config:
    config = Config()
    if path:
        file = Path(path)
        if not file.is_file():
            raise UserError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(file.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise UserError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise UserError(f"config file {path} must hold a mapping of sections")
        for key, value in _flatten(data):
            apply(config, key, value)
    for item in overrides:
        if "=" not in item:
            raise UserError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        apply(config, key.strip(), yaml.safe_load(value) if value.strip() else value)
    validate(config)
    return config


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)


def validate(config: Config) -> None:
    s, m, a, r = config.scenario, config.model, config.algorithm, config.runtime
    _require(config.seed >= 0, "seed must be >= 0")
    _require(config.training_seed >= -1, "training_seed must be >= 0, or -1 for the same as seed")
    _require(s.name in SCENARIOS, f"scenario.name must be one of {', '.join(SCENARIOS)}, got {s.name!r}")
    _require(s.name not in ("transforms", "label_groups", "sources") or bool(s.components.strip()),
             f"scenario.components must describe the components when scenario.name={s.name} (docs/scenarios.md)")
    _require(s.sizes in ("uniform", "fixed", "lognormal"), f"scenario.sizes must be uniform, fixed or lognormal, got {s.sizes!r}")
    _require(s.size_sigma > 0, "scenario.size_sigma must be > 0")
    _require(0 < s.test_fraction < 1, "scenario.test_fraction must be in (0, 1)")
    _require(s.synthetic_dim >= 1 and s.synthetic_modes >= 2, "scenario.synthetic_dim must be >= 1, synthetic_modes >= 2")
    _require(s.synthetic_separation > 0, "scenario.synthetic_separation must be > 0")
    _require(s.name != "synthetic" or getattr(m, "likelihood", "bernoulli") == "gaussian",
             "scenario.name=synthetic has real-valued features: set model.likelihood=gaussian")
    _require(s.name != "npz" or bool(s.path), "scenario.path must name an .npz file when scenario.name=npz")
    _require(s.num_clients >= 1, "scenario.num_clients must be >= 1")
    _require(s.unseen_clients >= 0, "scenario.unseen_clients must be >= 0")
    _require(s.num_components >= 1, "scenario.num_components must be >= 1")
    _require(s.samples_per_client >= 1, "scenario.samples_per_client must be >= 1")
    _require(0.0 <= s.size_spread < 1.0, "scenario.size_spread must be in [0, 1)")
    _require(s.test_samples_per_client >= 1, "scenario.test_samples_per_client must be >= 1")
    _require(s.dirichlet_alpha > 0, "scenario.dirichlet_alpha must be > 0")
    _require(m.hidden >= 1 and m.latent >= 1, "model.hidden and model.latent must be >= 1")
    _require(m.architecture in ("mlp", "conv"), f"model.architecture must be mlp or conv, got {m.architecture!r}")
    _require(m.likelihood in ("bernoulli", "gaussian"), f"model.likelihood must be bernoulli or gaussian, got {m.likelihood!r}")
    _require(m.channels >= 1, "model.channels must be >= 1")
    from .algorithms import ALGORITHMS

    _require(a.name in ALGORITHMS, f"algorithm.name must be one of {', '.join(ALGORITHMS)}, got {a.name!r}")
    from .algorithms import OWN_COMPONENT_COUNT

    _require(a.num_components in ("scenario", "auto") or (a.num_components.isdigit() and int(a.num_components) >= 1),
             f"algorithm.num_components must be scenario, auto or a whole number >= 1, got {a.num_components!r}")
    _require(a.num_components == "scenario" or a.name in OWN_COMPONENT_COUNT,
             f"algorithm.num_components={a.num_components} needs algorithm.name in {', '.join(OWN_COMPONENT_COUNT)} "
             f"(algorithm.name={a.name} fits the scenario's K)")
    _require(1 <= a.auto_min_components <= a.auto_max_components <= 32,
             "algorithm.auto_min_components and auto_max_components must satisfy 1 <= min <= max <= 32")
    _require(a.optimizer in ("adam", "sgd"), f"algorithm.optimizer must be adam or sgd, got {a.optimizer!r}")
    _require(a.prox_mu >= 0, "algorithm.prox_mu must be >= 0")
    _require(a.rounds >= 1, "algorithm.rounds must be >= 1")
    _require(a.warmup_rounds >= 0, "algorithm.warmup_rounds must be >= 0")
    _require(a.local_epochs >= 1 and a.batch_size >= 1, "algorithm.local_epochs and algorithm.batch_size must be >= 1")
    _require(a.lr > 0, "algorithm.lr must be > 0")
    _require(a.label_weight >= 0, "algorithm.label_weight must be >= 0")
    _require(a.estep_samples >= 1 and a.test_samples >= 1 and a.eval_samples >= 1 and a.mstep_samples >= 1,
             "algorithm.*_samples must be >= 1")
    _require(a.proportion_iterations >= 1, "algorithm.proportion_iterations must be >= 1")
    _require(0 < a.mstep_tempering <= 1, "algorithm.mstep_tempering must be in (0, 1]")
    _require(1 <= a.aggregation_power <= 16, "algorithm.aggregation_power must be in [1, 16]")
    _require(0 <= a.mstep_prior_power <= 16, "algorithm.mstep_prior_power must be in [0, 16]")
    _require(a.mstep_tempering_rounds >= -1, "algorithm.mstep_tempering_rounds must be >= 0, or -1 (every E-step round)")
    _require(a.init in ("topics", "random"), f"algorithm.init must be topics or random, got {a.init!r}")
    _require(a.codebook_size >= 2, "algorithm.codebook_size must be >= 2")
    _require(a.codebook_lloyd_iterations >= 1, "algorithm.codebook_lloyd_iterations must be >= 1")
    _require(a.topic_restarts >= 1 and a.topic_iterations >= 1, "algorithm.topic_restarts and topic_iterations must be >= 1")
    _require(a.eval_every >= 0, "algorithm.eval_every must be >= 0")
    _require(a.clients_per_round >= 0, "algorithm.clients_per_round must be >= 0 (0: every seen client)")
    _require(a.eval_clients >= 0, "algorithm.eval_clients must be >= 0 (0: every client)")
    _require(0 <= a.collapse_fraction < 1, "algorithm.collapse_fraction must be in [0, 1)")
    c = config.compression
    for direction in ("uplink", "downlink"):
        bits = getattr(c, f"{direction}_bits")
        _require(0 < bits <= 32 and math.isfinite(bits), f"compression.{direction}_bits must be in (0, 32], got {bits:g}")
        method = getattr(c, direction)
        _require(method in ("auto", *COMPRESSION_METHODS),
                 f"compression.{direction} must be auto or one of {', '.join(COMPRESSION_METHODS)}, got {method!r}")
    _require(c.error_feedback in ("auto", "on", "off"),
             f"compression.error_feedback must be auto, on or off, got {c.error_feedback!r}")
    _require(0 <= c.selection_threshold < 1, "compression.selection_threshold must be in [0, 1)")
    _require(c.value_bits in (1, 2, 4, 8, 16, 32), f"compression.value_bits must be 1, 2, 4, 8, 16 or 32, got {c.value_bits}")
    _require(not (c.value_bits == 1 and "randk" in (c.uplink, c.downlink)),
             "compression.value_bits=1 (signs with a mean magnitude) is biased: rand-k needs 2 or more")
    _require(c.residual_dtype in ("float16", "float32"),
             f"compression.residual_dtype must be float16 or float32, got {c.residual_dtype!r}")
    _require(r.device in ("auto", "cpu", "cuda") or r.device.startswith("cuda:"),
             "runtime.device must be auto, cpu, cuda or cuda:N")
    _require(r.threads_per_rank >= 0, "runtime.threads_per_rank must be >= 0")
    _require(r.poll_interval_ms >= 0, "runtime.poll_interval_ms must be >= 0")
    _require(r.group_size >= 0, "runtime.group_size must be >= 0 (0: automatic)")
    _require(r.checkpoint_every >= 0, "runtime.checkpoint_every must be >= 0 (0: no periodic checkpoints)")
    _require(r.round_timeout_s >= 0 and math.isfinite(r.round_timeout_s),
             "runtime.round_timeout_s must be >= 0 (0: no watchdog)")
