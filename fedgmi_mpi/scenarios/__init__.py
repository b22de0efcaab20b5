from __future__ import annotations

from ..config import Config
from .base import ClientData, Scenario


def build(config: Config) -> Scenario:
    s = config.scenario
    if s.name == "npz":
        from . import npz_file

        return npz_file.load(s.path, seed=config.seed, num_components=s.num_components,
                             unseen_clients=s.unseen_clients, unit_range=config.model.likelihood != "gaussian")
    if s.name in ("transforms", "label_groups", "sources"):
        from . import mixture

        return mixture.build(s, config.seed)
    if s.name == "synthetic":
        from . import synthetic

        return synthetic.build(s, config.seed)
    from . import rotated_digits

    return rotated_digits.build(
        seed=config.seed, num_clients=s.num_clients, unseen_clients=s.unseen_clients,
        num_components=s.num_components, samples_per_client=s.samples_per_client,
        test_samples_per_client=s.test_samples_per_client, size_spread=s.size_spread,
        dirichlet_alpha=s.dirichlet_alpha,
    )


__all__ = ["ClientData", "Scenario", "build"]
