"""Write the example IDX files configs/idx_28x28.yaml reads: the bundled digits upscaled to 28x28.

    python benchmarks/make_idx.py --out examples/idx
"""
from __future__ import annotations

import argparse
from pathlib import Path

from fedgmi_mpi.scenarios.examples import write_digits28

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="examples/idx", type=Path)
    for path in write_digits28(parser.parse_args().out):
        print(f"wrote {path}")
