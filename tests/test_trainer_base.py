"""nnUNetTrainerCL's own hooks that need no training run."""

from __future__ import annotations

import pytest
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_cl.trainers.base import nnUNetTrainerCL


def epochs_with_a_plot(monkeypatch, plot_every: int, num_epochs: int) -> tuple:
    drawn = []

    def stock_on_epoch_end(self):           # nnU-Net's on_epoch_end, reduced to its plot call and epoch count
        self.logger.plot_progress_png("output")
        self.current_epoch += 1

    class Logger:
        def plot_progress_png(self, output_folder):
            drawn.append(trainer.current_epoch)

    monkeypatch.setattr(nnUNetTrainer, "on_epoch_end", stock_on_epoch_end)
    trainer = object.__new__(nnUNetTrainerCL)
    trainer.logger, trainer.plot_every, trainer.num_epochs, trainer.current_epoch = Logger(), plot_every, num_epochs, 0
    for _ in range(num_epochs):
        trainer.on_epoch_end()
    assert type(trainer.logger).plot_progress_png is Logger.plot_progress_png
    assert "plot_progress_png" not in vars(trainer.logger)          # the skip is undone after every epoch
    return tuple(drawn)


@pytest.mark.parametrize("plot_every, num_epochs, expected", [
    (1, 4, (0, 1, 2, 3)),            # nnU-Net's behaviour
    (3, 8, (2, 5, 7)),               # every third epoch and the last
    (10, 4, (3,)),                   # longer than the run: the last epoch only
])
def test_progress_plot_every_nth_epoch_and_the_last(monkeypatch, plot_every, num_epochs, expected):
    assert epochs_with_a_plot(monkeypatch, plot_every, num_epochs) == expected
