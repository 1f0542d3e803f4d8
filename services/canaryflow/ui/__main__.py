"""``python -m canaryflow.ui``: the web view as a process."""

from __future__ import annotations

from canaryflow.ui.app import main

if __name__ == "__main__":
    main()
