"""Entry point so the stack can start the simulator with `python -m canaryflow.simulator`."""

from canaryflow.simulator.app import main

raise SystemExit(main())
