"""Console-side video: decoder, receiver, stale-picture monitor, HUD and display."""
