"""Board definitions, per-board folding configs and (later) drivers."""
