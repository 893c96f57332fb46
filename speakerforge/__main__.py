"""`python -m speakerforge ...` (also `torchrun --nproc_per_node=K -m speakerforge train ...`)."""

import sys

from speakerforge.cli import main

sys.exit(main())
