"""fedgmi-mpi: an MPI simulator for FedGMI, federated learning of probabilistic mixtures."""

__version__ = "0.1.0"
