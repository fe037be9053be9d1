"""coverservice: live-room covers — the best recent screenshot of every live stream."""

__version__ = "0.1.0"
