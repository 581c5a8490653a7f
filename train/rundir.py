"""The run folder rules every ``pixelfleet train`` command shares: a fresh run never overwrites
an existing one, ``--resume`` needs a checkpoint, and a resumed run keeps the fields its state
depends on (each trainer names them in its ``RESUME_FIXED``)."""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel

RUN_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's record of a run's checkpoints


class RunStateError(RuntimeError):
    """A fresh run would overwrite an existing one, or ``--resume`` found nothing to resume."""


def changed_fields(before: BaseModel, after: BaseModel, fixed: tuple[str, ...]) -> list[str]:
    """The dotted fields of ``fixed`` (``"optim"``, ``"scaling.num_workers"``) whose values differ
    between two configs of one run."""
    changed = []
    for dotted in fixed:
        old: Any = before
        new: Any = after
        for key in dotted.split("."):
            old, new = getattr(old, key), getattr(new, key)
        if old != new:
            changed.append(dotted)
    return changed


def check_run_dir(cfg: Any, resume: bool, fixed: tuple[str, ...]) -> None:
    """Refuse to start over an existing run without ``resume``, to resume a missing one, or to
    resume with a changed ``fixed`` field.

    Args:
        cfg: the run's config (a pydantic model with ``run_dir``, the folder of the run).
        resume: whether ``--resume`` was given.
        fixed: the fields that must not change on resume.

    Raises:
        RunStateError: as above; the message says what to do.
    """
    exists = (cfg.run_dir / RUN_SNAPSHOT).exists()
    if exists and not resume:
        raise RunStateError(f"{cfg.run_dir} holds a run: pass --resume to continue it, or choose another name or storage_path")
    if resume and not exists:
        raise RunStateError(f"nothing to resume in {cfg.run_dir}: no checkpoint was reported there")
    saved = cfg.run_dir / "config.yaml"
    if resume and saved.exists():
        changed = changed_fields(type(cfg).model_validate(yaml.safe_load(saved.read_text())), cfg, fixed)
        if changed:
            raise RunStateError(f"--resume continues the same run, but these fields differ from {saved}: {', '.join(changed)}")
