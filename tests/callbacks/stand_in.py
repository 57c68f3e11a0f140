"""A minimal module honouring the EPO callback contract, with a known entropy per epoch (1 + epoch)."""

import torch
from lightning.pytorch import LightningModule
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics import MeanMetric


class StandIn(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.entropy_reference: float | None = None
        self.beta = 1.0
        self.train_entropy = MeanMetric()
        self.seen: dict[int, tuple[float | None, float]] = {}

    def training_step(self, batch, batch_idx):
        self.train_entropy.update(torch.tensor(1.0 + self.current_epoch))
        self.seen[self.current_epoch] = (self.entropy_reference, self.beta)
        return self.layer(batch[0]).sum()

    def on_train_epoch_start(self) -> None:
        self.train_entropy.reset()

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.ones(4, 2)), batch_size=2)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)
