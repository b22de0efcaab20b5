"""``fedgmi infer``: a new client's mixture proportions from a log's saved model, by E-steps alone.

What an unseen client does in a run: importance-weighted log p_k(x_i) under each of the K VAEs
(the client's own noise stream: the run's seed, the client's id, the model's round), then EM on
its proportions with the likelihoods fixed, from uniform. That gives the point estimate
(maximum likelihood), each sample's responsibilities r_ik and assignment argmax_k r_ik, and the
client's mixture log-likelihood mean_i log sum_k pi_k p_k(x_i).

The uncertainty is the posterior over the proportions given the K likelihoods, under a
Dirichlet(``prior``) prior (default 0.5, Jeffreys: the least informative; 1, uniform, pulls
small proportions up), sampled by Gibbs sampling
(z_i | pi ~ Categorical(r_i), pi | z ~ Dirichlet(prior + counts)). Why this and not a bootstrap:
it is the model's own answer to "which proportions could have produced these samples", it
accounts for samples whose component is ambiguous (a bootstrap of the point estimate does too,
but only through resampling noise), and it also gives, for free, the posterior of the share of
the client's *own* samples drawn from each component (the counts / n), which is what the actual
sample counts measure. Both intervals are equal-tailed at ``level``. They are conditional on the
model: they do not include the VAEs' own error (the note in docs/analysis.md gives the measured
coverage).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .. import rng as rngs
from ..algorithms import em
from ..errors import UserError
from ..models import DensityModel, vae
from .metrics import aligned, confusion, match_components
from .model import SavedModel

INFER = 7  # the posterior sampler's stream purpose (rng.py keeps 1..6)
EM_ITERATIONS = 1000  # as a run's evaluation rounds


@dataclass
class ClientInference:
    client: int
    sample_index: np.ndarray  # [n] rows of the data file the E-steps used
    proportions: np.ndarray  # [K] maximum-likelihood estimate (learned component order)
    posterior_mean: np.ndarray  # [K]
    posterior_sd: np.ndarray  # [K]
    lower: np.ndarray  # [K] equal-tailed interval of the proportions at the level asked
    upper: np.ndarray
    share_lower: np.ndarray  # [K] the same for the share of this client's own samples per component
    share_upper: np.ndarray
    responsibilities: np.ndarray  # [n, K]
    mixture_log_likelihood: float  # mean over the samples, nats
    accuracy: float  # personalised accuracy on its test samples (all samples without a test mask); NaN without labels
    actual: np.ndarray | None = None  # [K] true shares of the samples used (from `component`), evaluation only
    dirichlet: np.ndarray | None = None  # [K] the file's `proportions` row, evaluation only
    true_components: np.ndarray | None = None  # [n] evaluation only
    draws: tuple[np.ndarray, np.ndarray] | None = None  # the posterior draws (proportions, shares), if kept

    @property
    def assignment(self) -> np.ndarray:
        return self.responsibilities.argmax(1)


def parse_clients(text: str | None, available: np.ndarray) -> np.ndarray:
    """"3,5-7" -> [3, 5, 6, 7]; None: every client in the file."""
    if not text:
        return available
    chosen: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            chosen += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    except ValueError:
        raise UserError(f"--clients must be ids and ranges like 3,5-7, got {text!r}") from None
    if not chosen:
        raise UserError(f"--clients {text!r} names no client (a range is low-high, e.g. 3-7)")
    missing = sorted(set(chosen) - set(available.tolist()))
    if missing:
        raise UserError(f"--clients: no samples for client(s) {missing[:5]} in the data file")
    return np.array(sorted(set(chosen)), dtype=np.int64)


def posterior(log_likelihood: np.ndarray, estimate: np.ndarray, prior: float, draws: int, burn_in: int,
              generator: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Gibbs draws ([draws, K] proportions, [draws, K] shares of the samples) given the samples'
    log-likelihoods [n, K], started at the point estimate."""
    n, k = log_likelihood.shape
    shifted = log_likelihood - log_likelihood.max(1, keepdims=True)
    likelihood = np.exp(shifted)
    proportions = np.clip(estimate, 1e-12, None)
    kept_proportions = np.empty((draws, k))
    kept_shares = np.empty((draws, k))
    for step in range(burn_in + draws):
        weights = likelihood * proportions
        cumulative = np.cumsum(weights, 1)
        u = generator.random(n) * cumulative[:, -1]
        z = (cumulative < u[:, None]).sum(1).clip(max=k - 1)
        counts = np.bincount(z, minlength=k)
        proportions = np.clip(generator.dirichlet(prior + counts), 1e-300, None)
        if step >= burn_in:
            kept_proportions[step - burn_in] = proportions
            kept_shares[step - burn_in] = counts / n
    return kept_proportions, kept_shares


@torch.no_grad()
def infer_clients(model: SavedModel, arrays: dict[str, np.ndarray], clients: np.ndarray, level: float = 0.9,
                  prior: float = 0.5, draws: int = 2000, burn_in: int = 200, importance_samples: int | None = None,
                  seed: int | None = None, device: str = "cpu", keep_draws: bool = False,
                  use_labels: bool = False) -> list[ClientInference]:
    """Each client's proportions from uniform by E-steps alone (the run's evaluation of an unseen
    client), with Gibbs draws for their uncertainty. ``use_labels``: score the samples by
    p_k(x) p_k(y|x) with their labels ``arrays["y"]``, as a run with ``algorithm.eval_uses_labels`` does."""
    params, shape = model.vae(device)  # shape: the models.DensityModel (input_dim, num_components, latent, functions)
    x_all = arrays["x"]
    if x_all.shape[1] != shape.input_dim:
        raise UserError(f"the data has {x_all.shape[1]} features per sample, the model expects {shape.input_dim}")
    if use_labels:
        if "y" not in arrays:
            raise UserError("--labels needs the samples' labels (y); the data has none (use --no-labels)")
        classes = int(model.description.get("num_classes", 0))
        if len(arrays["y"]) and int(arrays["y"].max()) >= classes:
            raise UserError(f"label {int(arrays['y'].max())} in y, but the model has {classes} classes "
                            f"(0..{classes - 1}); --labels needs the run's labels")
    seed = model.seed if seed is None else seed
    samples = importance_samples or int(model.config.get("algorithm", {}).get("eval_samples", 64))
    owner = arrays.get("client", np.zeros(len(x_all), dtype=np.int64))
    k = shape.num_components
    true_k = int(model.config.get("scenario", {}).get("num_components", k))  # the data's K; the run may fit another
    tail = (1 - level) / 2
    out = []
    for cid in clients:
        rows = np.flatnonzero(owner == cid)
        test = arrays["test"][rows].astype(bool) if "test" in arrays else np.zeros(len(rows), dtype=bool)
        used, scored = (rows[~test], rows[test]) if test.any() and (~test).any() else (rows, rows)
        # the run's evaluation stream for this client: the test samples' noise follows the training samples'
        # (drawn on the device: a CUDA generator draws other numbers than a CPU one from the same seed)
        generator = rngs.torch_generator(seed, rngs.CLIENT_EVAL, int(cid), model.round, device=device)
        log_likelihood, logits = _log_likelihoods(params, shape, x_all, used, samples, generator, model.max_train, device)
        mask = torch.ones(1, len(used), dtype=torch.bool, device=device)
        uniform = torch.full((1, k), 1.0 / k, device=device)
        estep_ll = log_likelihood
        if use_labels:
            labels = torch.as_tensor(arrays["y"][used].astype(np.int64), device=device).unsqueeze(0)
            estep_ll = em.with_labels(log_likelihood, logits, labels)
        estimate, resp = em.fit_proportions(estep_ll, mask, uniform, EM_ITERATIONS)
        mixture = float(em.masked_mean(em.mixture_log_likelihood(log_likelihood, estimate).unsqueeze(2), mask)[0, 0])
        accuracy = float("nan")
        if "y" in arrays:
            if scored is used:
                test_ll, test_logits = log_likelihood, logits
            else:
                test_ll, test_logits = _log_likelihoods(params, shape, x_all, scored, samples, generator, model.max_test,
                                                        device)
            predicted = em.predict_proba(test_ll, test_logits, estimate).argmax(2)[0].cpu().numpy()
            accuracy = float((predicted == arrays["y"][scored]).mean())
        estimate_np = estimate[0].double().cpu().numpy()
        ll_np = estep_ll[0].double().cpu().numpy()
        draws_p, draws_s = posterior(ll_np, estimate_np, prior, draws, burn_in, rngs.numpy_rng(seed, INFER, int(cid)))
        actual, true_components = None, None
        if "component" in arrays:
            true_components = arrays["component"][used].astype(np.int64)
            actual = np.bincount(true_components, minlength=true_k)[:true_k] / len(used)
        dirichlet = arrays["proportions"][cid] if "proportions" in arrays and cid < len(arrays["proportions"]) else None
        out.append(ClientInference(
            client=int(cid), sample_index=used, proportions=estimate_np, posterior_mean=draws_p.mean(0),
            posterior_sd=draws_p.std(0), lower=np.quantile(draws_p, tail, axis=0), upper=np.quantile(draws_p, 1 - tail, axis=0),
            share_lower=np.quantile(draws_s, tail, axis=0), share_upper=np.quantile(draws_s, 1 - tail, axis=0),
            responsibilities=resp[0].double().cpu().numpy(), mixture_log_likelihood=mixture, accuracy=accuracy,
            actual=actual, dirichlet=dirichlet, true_components=true_components,
            draws=(draws_p, draws_s) if keep_draws else None))
    return out


def _log_likelihoods(params: vae.Params, shape: DensityModel, x_all: np.ndarray, rows: np.ndarray, samples: int,
                     generator: torch.Generator, padded: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """log p_k(x) [1, n, K] and class logits [1, K, n, C] of the given rows, padded as a run pads
    (to its largest client) so the arithmetic, and the numbers, are the run's."""
    n = len(rows)
    padded = max(padded, n)
    x = torch.zeros(1, padded, shape.input_dim, device=device)
    x[0, :n] = torch.as_tensor(x_all[rows], dtype=torch.float32, device=device)
    noise = em.stacked_normal([generator], [(samples, shape.num_components, n, shape.latent)],
                              (samples, shape.num_components, padded, shape.latent), axis=2)
    log_px, logits = shape.iw_log_likelihood(params, x, noise.to(device))
    return log_px.transpose(1, 2)[:, :n], logits[:, :, :n]


@dataclass
class Scores:
    matching: np.ndarray  # learned component matched to true component t
    matching_source: str
    mae_actual: float
    mae_dirichlet: float
    coverage: float  # share of (client, component) intervals of the proportions that hold the Dirichlet draw
    share_coverage: float  # share of the samples' intervals that hold the actual shares
    intervals: int


def score(results: list[ClientInference], matching: np.ndarray | None) -> Scores | None:
    """Against the truth in the data file, where it has one; the run's matching if the log has one,
    else a matching on these samples' hard assignments."""
    if not results or results[0].actual is None and results[0].dirichlet is None:
        return None
    k = len(results[0].proportions)
    reference = results[0].actual if results[0].actual is not None else results[0].dirichlet
    source = "the run's final evaluation"
    if matching is None:
        if results[0].actual is None:
            return None
        matching = match_components(_confusion(results, len(reference)))
        source = "these samples (Hungarian)"

    def mean_error(reference_of) -> float:
        refs = [aligned(r.proportions, reference_of(r), matching) for r in results if reference_of(r) is not None]
        return float(np.mean([np.abs(p - t).mean() for p, t in refs])) if refs else float("nan")

    def covered(low_of, high_of, reference_of) -> float:
        hits = []
        for r in results:
            if reference_of(r) is not None:
                low, truth = aligned(low_of(r), reference_of(r), matching)
                high, _ = aligned(high_of(r), reference_of(r), matching)
                hits.append((low <= truth) & (truth <= high))
        return float(np.mean(np.concatenate(hits))) if hits else float("nan")

    return Scores(matching, source, mean_error(lambda r: r.actual), mean_error(lambda r: r.dirichlet),
                  covered(lambda r: r.lower, lambda r: r.upper, lambda r: r.dirichlet),
                  covered(lambda r: r.share_lower, lambda r: r.share_upper, lambda r: r.actual),
                  len(results) * max(k, len(reference)))


def _confusion(results: list[ClientInference], k: int) -> np.ndarray:
    return sum(confusion(r.true_components, r.responsibilities, k) for r in results)
