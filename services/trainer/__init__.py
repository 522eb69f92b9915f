"""The trainer service: consumes labeled comparisons from the queue, keeps them durably, trains a
reward model every ``train_every`` comparisons (and optionally runs policy optimisation), promotes
each checkpoint to the serving pods and reports ``Trainer.Status``. The training itself is the
``services.training`` library.

- ``config``: ``TrainerConfig`` (``cai serve trainer --config FILE``);
- ``worker``: ``TrainerWorker``, the consume/train/promote loop;
- ``service``: the gRPC ``Trainer`` servicer and the process around the worker.
"""
