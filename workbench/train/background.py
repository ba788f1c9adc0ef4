"""Pretraining in a background thread, so a notebook kernel stays free while a run trains."""
from __future__ import annotations

import os
import sys
import threading
from typing import Any, Iterable

from workbench.runs import Run
from workbench.train.config import PretrainConfig
from workbench.train.engine import Trainer


class PretrainHandle:
    """A pretraining run in a background thread: ``.run`` (the Run, available at once), ``done()``,
    ``wait() -> Run`` (re-raises the run's exception), ``stop()`` (finish after the current step with a
    checkpoint; status ``stopped`` with the epoch it reached). The trainer must be prepared (``Trainer.prepare``)."""

    def __init__(self, trainer: Trainer):
        self._trainer = trainer.prepare()
        self.run: Run = trainer.run_record
        self._trainer.progress_bar = _caller_bar(self._trainer)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._target, name=f"pretrain-{self.run.path.name}", daemon=True)
        self._thread.start()

    def _target(self) -> None:
        try:
            self._trainer.run()
        except BaseException as e:  # recorded in status.json by the trainer; kept for wait()
            self.error = e

    def done(self) -> bool:
        return not self._thread.is_alive()

    def stop(self) -> None:
        self._trainer.stop()

    def wait(self, timeout: float | None = None) -> Run:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"pretraining {self.run.path} still running after {timeout} s")
        if self.error is not None:
            raise self.error
        return self.run

    def __repr__(self) -> str:
        return f"PretrainHandle({str(self.run.path)!r}, done={self.done()})"


def _caller_bar(trainer: Trainer) -> Any:
    """The run's progress bar, made here in the calling thread where a Jupyter kernel runs us: a notebook bar is
    displayed where it is made, so it shows in the cell that started the run (made in the training thread, it would
    land in whichever cell executes then); its updates are widget messages that follow it there. None elsewhere (the
    trainer makes its text bar itself)."""
    from workbench.train.engine import _progress_enabled

    if "ipykernel" not in sys.modules or not trainer.is_main or not _progress_enabled(trainer.config.train.progress):
        return None
    from tqdm.auto import tqdm

    c = trainer.config
    resume = getattr(trainer, "_resume", None)
    return tqdm(total=trainer.parts.total_steps, initial=resume.step if resume is not None else 0, desc=f"{c.method}/{c.model.backbone}",
                unit="step", dynamic_ncols=True)


def start_pretrain(config: PretrainConfig | dict | None = None, callbacks: Iterable[Any] = (),
                   resume: str | os.PathLike | Run | None = None) -> PretrainHandle:
    """Start ``pretrain`` in a background thread. The config is validated, the data loaded, the model built and
    the run folder created (or, resuming, locked and its checkpoint loaded) in the calling thread first, so bad
    input raises here and leaves nothing behind; training then runs in the thread (no signal handlers there:
    ``stop()`` ends it)."""
    return PretrainHandle(Trainer(config, callbacks, resume))
