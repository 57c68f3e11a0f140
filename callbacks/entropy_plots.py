"""``EntropyPlots``: EPO's central claim as pictures in TensorBoard (needs matplotlib: ``pip install -e ".[plots]"``).

- ``entropy/turn_by_step``: the mean token entropy per turn index (rows) and RL step (columns), the picture of the
  cascade the paper describes: early turns' entropy moving later turns' (docs/algorithm.md 2-3).
- ``entropy/corridor``: each step's mean token entropy against the corridor ``[kappa_l H_ref, kappa_r H_ref]`` of the
  smoothing term (paper Eq. 3) that step trained with.

Add it to ``trainer.callbacks`` (``- class_path: callbacks.EntropyPlots``); it sets nothing on the module.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from typing_extensions import override

from epo_lightning.errors import ConfigurationError


class EntropyPlots(pl.Callback):
    """Draw the per-turn entropy heatmap and the entropy corridor every ``every_n_steps`` RL steps.

    Args:
        every_n_steps: draw after every this many RL steps (and after the last).
        max_turns: turn indices shown in the heatmap.
    """

    controls: tuple[str, ...] = ()

    def __init__(self, every_n_steps: int = 5, max_turns: int = 20) -> None:
        if every_n_steps < 1 or max_turns < 1:
            raise ValueError(f"EntropyPlots needs every_n_steps and max_turns >= 1, got {every_n_steps}, {max_turns}.")
        self.every_n_steps = every_n_steps
        self.max_turns = max_turns
        self.turns: list[list[float]] = []  # per step: mean entropy per turn index (NaN where no turn)
        self.means: list[float] = []
        self.references: list[float] = []  # the H_ref each step trained with (NaN before there is one)
        self._reference = math.nan
        self._drawn_at = -1  # the last step drawn

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        try:
            import matplotlib  # noqa: F401
        except ModuleNotFoundError as error:
            raise ConfigurationError(
                "callbacks.EntropyPlots draws with matplotlib: pip install matplotlib (or the extra '.[plots]'), or "
                "remove it from trainer.callbacks."
            ) from error

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        # read while training, after every callback has set this step's reference (whatever their order)
        reference = pl_module.entropy_reference
        if isinstance(reference, torch.Tensor):
            reference = float(reference.nanmean())
        self._reference = math.nan if reference is None else float(reference)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        turns = pl_module.train_turn_entropy.compute()[: self.max_turns]  # all-reduced: every rank calls it
        self.turns.append(turns.tolist())
        self.means.append(float(pl_module.train_entropy.compute()))
        self.references.append(self._reference)
        self._reference = math.nan
        if (trainer.current_epoch + 1) % self.every_n_steps == 0:
            self._draw(trainer, pl_module)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if self.means and self._drawn_at != len(self.means) - 1:  # max_epochs, max_steps, EarlyStopping, ...
            self._draw(trainer, pl_module)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"turns": self.turns, "means": self.means, "references": self.references}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.turns = [list(row) for row in state_dict.get("turns", [])]
        self.means = list(state_dict.get("means", []))
        self.references = list(state_dict.get("references", []))

    def _draw(self, trainer: pl.Trainer, pl_module: Any) -> None:
        """Both figures of every step so far, at the last step's index (the global-zero rank draws)."""
        self._drawn_at = step = len(self.means) - 1
        if not trainer.is_global_zero:
            return
        loss = pl_module.loss_config
        figures = {
            "entropy/turn_by_step": self.heatmap(),
            "entropy/corridor": self.corridor(loss.kappa_l, loss.kappa_r),
        }
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                for tag, figure in figures.items():
                    logger.experiment.add_figure(tag, figure, step, close=False)

    def heatmap(self) -> Any:
        """Turn index x RL step, colour = mean token entropy (blank where no episode reached the turn)."""
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        width = max(len(row) for row in self.turns)
        table = torch.full((width, len(self.turns)), math.nan)
        for column, row in enumerate(self.turns):
            table[: len(row), column] = torch.tensor(row)
        reached = (~table.isnan()).any(dim=1).nonzero()
        table = table[: int(reached.max()) + 1 if reached.numel() else 1]  # turn indices no episode reached: cut
        figure = Figure(figsize=(6, 4))
        axes = figure.add_subplot()
        image = axes.imshow(table.numpy(), aspect="auto", origin="lower", cmap="viridis", interpolation="nearest")
        figure.colorbar(image, ax=axes, label="mean token entropy (nats)")
        axes.set(xlabel="RL step", ylabel="turn index", title="entropy per turn and step")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))
        return figure

    def corridor(self, kappa_l: float, kappa_r: float) -> Any:
        """Each step's mean token entropy, and the corridor it trained against (Eq. 3)."""
        from matplotlib.figure import Figure

        steps = list(range(len(self.means)))
        reference = torch.tensor(self.references)
        figure = Figure(figsize=(6, 4))
        axes = figure.add_subplot()
        axes.fill_between(steps, (kappa_l * reference).numpy(), (kappa_r * reference).numpy(), alpha=0.25,
                          label=f"corridor [{kappa_l:g}, {kappa_r:g}] x H_ref")  # fmt: skip
        axes.plot(steps, reference.numpy(), "--", label="H_ref")
        axes.plot(steps, self.means, marker="o", label="mean token entropy")
        axes.set(xlabel="RL step", ylabel="entropy (nats)", title="entropy and the smoothing corridor")
        axes.legend()
        return figure
