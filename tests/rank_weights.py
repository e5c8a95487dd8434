"""dcgan64.py's main() as a torchrun process that then saves its own G weights to OUT/G_rank<RANK>.pt, so that a
test can check that DistributedDataParallel kept the processes' weights equal. Run it as dcgan64.py is run."""
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import dcgan64  # noqa: E402

built = []
build = dcgan64.build
dcgan64.build = lambda *args: built.append(build(*args)) or built[-1]
dcgan64.main(sys.argv[1:])
torch.save(built[0][0].state_dict(), Path(sys.argv[sys.argv.index("--out") + 1]) / f"G_rank{os.environ['RANK']}.pt")
