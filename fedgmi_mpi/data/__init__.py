"""Users' data files besides the .npz layout: IDX and HDF5 readers, ``load_source`` specs, and
``inspect`` / ``convert`` behind ``fedgmi data inspect`` / ``fedgmi data convert`` (docs/data.md)."""
from .readers import SPEC_FORMS, Report, Source, convert, examine, inspect, load_source, read_hdf5, read_idx

__all__ = ["SPEC_FORMS", "Report", "Source", "convert", "examine", "inspect", "load_source", "read_hdf5", "read_idx"]
