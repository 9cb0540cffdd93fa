"""The training loop's state: what a checkpoint saves and a resumed run continues from."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class TrainState:
    """Position, early-stopping bookkeeping and counters; saved as JSON in every checkpoint."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    step_in_epoch: int = 0
    best: float | None = None  # best value of the watched validation metric so far
    best_step: int | None = None
    bad_evals: int = 0  # evaluations since the last improvement
    train_seconds: float = 0.0
    samples: int = 0
    tokens: int = 0
    done: bool = False  # finished (all steps, or stopped early): a resume only writes the outputs again
    # the logged train loss averages the steps since the last log: (sum, steps), so a resumed run logs the same
    log_window: tuple[float, int] = field(default=(0.0, 0))

    def __getitem__(self, key: str) -> Any:
        """Read access by name, as callbacks written for the dict this state used to be (``state["step"]``)."""
        return getattr(self, key)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainState:
        known = {f.name for f in fields(cls)}
        state = cls(**{k: v for k, v in raw.items() if k in known})
        state.log_window = tuple(state.log_window) if state.log_window else (0.0, 0)
        return state
