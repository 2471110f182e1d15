import sys

from gsv_ray.cli import main

sys.exit(main())
