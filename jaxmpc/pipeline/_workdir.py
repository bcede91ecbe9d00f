"""The work folder: its paths, its JSON files, and the inputs every step loads from it."""

from __future__ import annotations

import dataclasses
import json
import os

from jaxmpc import _io
from jaxmpc.pipeline._config import PipelineConfig, PipelineError


def write_json(path, obj) -> None:
    """Writes ``obj`` to ``path`` as JSON, atomically (creates the folder)."""
    _io.write_json(path, obj)


def read_json(path, what: str):
    """Reads a JSON file; a missing or malformed file is a :class:`PipelineError` naming ``what``."""
    try:
        return _io.read_json(path, what)
    except (FileNotFoundError, _io.JSONFileError) as e:
        raise PipelineError(str(e)) from e


@dataclasses.dataclass(frozen=True)
class Workdir:
    """Paths of a pipeline work folder."""

    root: str

    def path(self, *parts) -> str:
        return os.path.join(self.root, *parts)

    @property
    def train(self):
        return self.path("train")

    def plan(self, tag):
        return self.path("plans", f"{tag}.json")

    def finetune(self, tag):
        return self.path("finetune", tag)

    def finetune_seed(self, tag, seed: int):
        """Run folder of finetuning seed ``seed`` (0: :meth:`finetune`)."""
        return self.finetune(tag) if seed == 0 else self.path("finetune_seeds", tag, f"seed{seed}")

    def infer(self, tag):
        return self.path("infer", tag)

    def config(self) -> PipelineConfig:
        return PipelineConfig.from_json(read_json(self.path("pipeline.json"), "pipeline config"))

    def save_config(self, cfg: PipelineConfig) -> None:
        p = self.path("pipeline.json")
        if os.path.exists(p):
            old = PipelineConfig.from_json(read_json(p, "pipeline config")).to_json()  # fills new fields' defaults
            norm = json.loads(_io.dumps_json(cfg.to_json()))
            if json.loads(_io.dumps_json(old)) != norm:
                raise PipelineError(f"{p} holds a different configuration; use another work folder or delete it")
        write_json(p, cfg.to_json())


def read_optional(path):
    """The JSON object in ``path``, or ``None`` when there is no such file."""
    if not os.path.exists(path):
        return None
    return read_json(path, os.path.basename(path))


# ---------------------------------------------------------------------------------------------
# what the steps load


def train_config(cfg: PipelineConfig, finetune: bool = False, progress: bool = True):
    from jaxmpc import train

    base = train.get_config(cfg.finetune_config if finetune else cfg.train_config)
    over = dict(cfg.overrides)
    over.update(cfg.finetune_overrides if finetune else cfg.train_overrides)
    try:
        return base.replace(progress=progress, **over)
    except (TypeError, ValueError) as e:
        raise PipelineError(f"bad training override: {e}") from e


def dataset_of(cfg: PipelineConfig, dataset=None):
    from jaxmpc import data

    if dataset is not None:
        return dataset
    tc = train_config(cfg)
    return data.load_dataset(tc.dataset, **tc.dataset_kwargs)


def load_run(path: str, what: str):
    from jaxmpc import train

    try:
        return train.load_variables(path)
    except FileNotFoundError as e:
        raise PipelineError(f"missing {what}: {e} (run the previous step first)") from e


def model_of(cfg: PipelineConfig, dataset):
    from jaxmpc import train

    try:
        return train.build_model(train_config(cfg), dataset.info)
    except ValueError as e:
        raise PipelineError(str(e)) from e
