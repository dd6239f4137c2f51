"""`python -m csakd.train ...` (and `torchrun --nproc-per-node N -m csakd.train ...`): as `csakd train`."""
import sys

from ..cli.train import main

sys.exit(main())
