"""`python -m tuneforge ...`: what torchrun and `accelerate launch` start (`torchrun ... -m tuneforge train R.yaml`)."""
import sys

from .cli import main

sys.exit(main())
