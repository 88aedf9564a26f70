"""Transfer examples crafted once per source model, stored and shared by every student.

A transfer attack (``transfer_pgd_trades``, ``transfer_cw_inf``) takes its base attack's
gradients on a *source* model (the robust teacher) and scores the evaluated model on the
examples. Two ways to make them (``transfer=``, ``--transfer-examples``):

``per_source`` (the default)
    :func:`craft` runs the base attack on the source on **every** evaluation point, in
    test-set order, ``batch_size`` points at a time, after ``seed_everything(seed)``: the
    examples depend on the source, the points, eps, the attack's settings, the seed and the
    batch size, and on nothing about any student. Every student of that source is scored
    on the same examples; a point is robust when the student classifies it correctly clean
    *and* its example. A :class:`TransferStore` keeps them beside the source's run (one
    ``.pt`` per attack and key, its sha256 in ``transfer.json``), written atomically and
    crafted under a lock, so concurrent students (local workers, SLURM jobs) craft once and
    the others read; a crafting killed midway resumes from its last saved batch with the
    same random stream.
``per_student`` (the released evaluation script's way)
    the examples are crafted again for each student, only on the points that student
    classifies correctly, batched among those points, so the random starts differ from
    student to student.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, ContextManager

import torch
from tqdm.auto import tqdm

from .. import sanity
from ..attacks import attack_settings, create_attack, get_attack
from ..checkpoint import atomic_write_bytes, atomic_write_json, load_checkpoint, sha256_file
from ..errors import UserError, choices_error
from ..faults import kill_point
from ..utils import eval_mode, rng_state, seed_everything, set_rng_state, tensor_sha256
from .scoring import entry, predict

log = logging.getLogger(__name__)

PER_SOURCE, PER_STUDENT = "per_source", "per_student"
MODES = (PER_SOURCE, PER_STUDENT)
DEFAULT = PER_SOURCE
RECORD = "transfer.json"
FORMAT = "ciard-bench/transfer/1"
SAVE_EVERY_S = 60.0      # a crafting in progress saves its batches at most this often


def check_mode(mode: str) -> str:
    """``per_source`` | ``per_student`` (``-`` spelt as on the command line is accepted)."""
    value = str(mode).replace("-", "_")
    if value not in MODES:
        raise choices_error("transfer examples", mode, [m.replace("_", "-") for m in MODES])
    return value


def crafting_key(name: str, x: torch.Tensor, y: torch.Tensor, eps: float, *, seed: int,
                 batch_size: int, n_classes: int, overrides: dict | None = None,
                 source_id: str | None = None) -> dict[str, Any]:
    """Everything a per-source crafting depends on (``source_id``: the source checkpoint's
    sha256 or spec; without one the examples are not stored)."""
    spec = get_attack(name)
    if spec.kind != "transfer":
        raise UserError(f"attack {name!r} is not a transfer attack; accepted: "
                        "an attack of kind transfer")
    extra = {"n_classes": n_classes} if "n_classes" in attack_settings(spec.base, eps) else {}
    return {"attack": name, "settings": attack_settings(name, eps, **{**extra, **(overrides or {})}),
            "eps": float(eps), "seed": int(seed), "batch_size": int(batch_size),
            "n": len(y), "x": tensor_sha256(x), "y": tensor_sha256(y), "source": source_id}


def key_digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def craft(name: str, source: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *,
          seed: int, batch_size: int, n_classes: int, device: Any, overrides: dict | None = None,
          progress: bool = False, partial: Path | None = None,
          save_every_s: float | None = None) -> torch.Tensor:
    """Examples of transfer attack ``name`` crafted on ``source`` for every point of ``x``
    (CPU tensor, test-set order), batch by batch after ``seed_everything(seed)``.

    With ``partial`` (a file path) the batches done so far and the random state after them
    are saved there (atomically, at most every ``save_every_s`` seconds); a crafting killed
    midway continues from them and ends with the same examples as one run straight through.
    """
    save_every_s = SAVE_EVERY_S if save_every_s is None else save_every_s
    spec = get_attack(name)
    settings = attack_settings(spec.base, eps, **(overrides or {}))
    extra = {k: v for k, v in (("n_classes", n_classes), ("seed", seed)) if k in settings}
    attack = create_attack(spec.base, source, eps=eps, **{**extra, **(overrides or {})})
    batches = torch.arange(len(y)).split(batch_size)
    device = torch.device(device)
    chunks: list[torch.Tensor] = []
    seed_everything(seed)
    if partial is not None and Path(partial).is_file():
        saved = load_checkpoint(partial)
        chunks = list(saved["chunks"])
        set_rng_state(saved["rng"], device)
        log.info("%s: continuing its crafting after %d of %d batches", name, len(chunks),
                 len(batches))
    last_save = time.perf_counter()
    with eval_mode(source):
        for i in tqdm(range(len(chunks), len(batches)), desc=f"{name} (source)", leave=False,
                      disable=not progress):
            j = batches[i]
            chunks.append(attack(x[j].to(device), y[j].to(device)).detach().cpu())
            if partial is not None and i + 1 < len(batches) and \
                    time.perf_counter() - last_save >= save_every_s:
                buf = io.BytesIO()
                torch.save({"chunks": chunks, "rng": rng_state(device)}, buf)
                atomic_write_bytes(partial, buf.getvalue())
                last_save = time.perf_counter()
                kill_point("transfer_batch")        # tests: a kill inside a crafting
    return torch.cat(chunks) if chunks else x[:0].clone()


class TransferStore:
    """The crafted examples of one source model, in ``folder`` (beside the source's run).

    ``folder/transfer.json`` records, per key digest, the attack, its key, the file
    (``transfer/<attack>-<digest>.pt``, relative to ``folder``), its sha256, the points and
    the seconds the crafting took. ``lock`` (a context-manager factory, e.g. the source
    cell's file lock) is held while a missing set is crafted, so concurrent readers craft it
    once: the first crafts, the others wait and then read.
    """

    def __init__(self, folder: str | Path, lock: Callable[[], ContextManager] | None = None):
        self.folder = Path(folder)
        self.lock = lock or contextlib.nullcontext

    def record(self) -> dict[str, Any]:
        path = self.folder / RECORD
        if not path.is_file():
            return {"format": FORMAT, "examples": {}}
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:     # never written half (atomic); a hand-edited file
            raise UserError(f"{str(path)!r} is not valid JSON; delete it to craft the transfer "
                            "examples again") from None

    def _read(self, digest: str) -> tuple[torch.Tensor, dict[str, Any]] | None:
        entry = self.record()["examples"].get(digest)
        if entry is None:
            return None
        path = self.folder / entry["file"]
        if not path.is_file() or sha256_file(path) != entry["sha256"]:
            log.warning("%s is missing or does not match its sha256 in %s; crafting again",
                        path, self.folder / RECORD)
            return None
        return load_checkpoint(path), entry

    def get(self, key: dict[str, Any], make: Callable[[Path], torch.Tensor]
            ) -> tuple[torch.Tensor, dict[str, Any]]:
        """The examples for ``key``: read when stored, else ``make(partial_path)`` under the
        lock, then stored. Returns ``(examples, record entry)``."""
        digest = key_digest(key)
        found = self._read(digest)
        if found is not None:
            return found
        with self.lock():
            found = self._read(digest)     # crafted by another process while this one waited
            if found is not None:
                return found
            name = f"transfer/{key['attack']}-{digest[:16]}.pt"
            partial = self.folder / (name + ".partial")
            start = time.perf_counter()
            examples = make(partial)
            if examples.shape[0] != key["n"]:
                raise UserError(f"transfer attack {key['attack']!r}: {examples.shape[0]} examples "
                                f"for {key['n']} points; expected one per point")
            buf = io.BytesIO()
            torch.save(examples.contiguous(), buf)
            atomic_write_bytes(self.folder / name, buf.getvalue())
            entry = {"attack": key["attack"], "file": name,
                     "sha256": hashlib.sha256(buf.getvalue()).hexdigest(), "n": key["n"],
                     "crafting_s": time.perf_counter() - start, "key": key}
            record = self.record()
            record["examples"][digest] = entry
            atomic_write_json(self.folder / RECORD, record)
            partial.unlink(missing_ok=True)
            return examples, entry


def examples_provider(source, x, y, opt: Any, store: Any, source_id: str | None):
    """``name -> (examples, info)`` for the per-source transfer attacks: from ``store``
    (crafted there once, under its lock) or crafted here, each attack at most once."""
    made: dict[str, tuple[torch.Tensor, dict]] = {}

    def provide(name: str) -> tuple[torch.Tensor, dict]:
        if name not in made:
            over = opt.overrides.get(name, {})

            def make(partial: Path | None) -> torch.Tensor:
                return craft(name, source, x, y, opt.eps, seed=opt.seed,
                             batch_size=opt.batch_size, n_classes=opt.n_classes,
                             device=opt.device, overrides=over, progress=opt.progress,
                             partial=partial)
            if store is None or source_id is None:
                start = time.perf_counter()
                examples, info = make(None), {"stored": False}
                info["crafting_s"] = time.perf_counter() - start
            else:
                key = crafting_key(name, x, y, opt.eps, seed=opt.seed, batch_size=opt.batch_size,
                                   n_classes=opt.n_classes, overrides=over,
                                   source_id=source_id)
                examples, entry = store.get(key, make)
                info = {"stored": True, "file": entry["file"], "crafting_s": entry["crafting_s"]}
            made[name] = examples, {**info, "examples_sha256": tensor_sha256(examples)}
        return made[name]
    return provide


def evaluate_transfer(name: str, model, x, y, clean_ok, clean_acc: float, opt: Any):
    """A transfer attack scored on the examples crafted once on the source for every point
    (``opt``: the engine's ``Options``): robust = correct on the clean point and on its example."""
    if opt.transfer_examples is None:
        raise UserError(f"attack {name!r} needs a source model to craft examples on "
                        "(--source PATH or rb:NAME)")
    examples, info = opt.transfer_examples(name)
    start = time.perf_counter()
    scored = predict(model, examples, opt.batch_size, opt.device) == y
    rescored = predict(model, examples, max(1, opt.batch_size // 2), opt.device) == y
    elapsed = time.perf_counter() - start
    ok = scored & clean_ok
    settings = attack_settings(name, opt.eps, **opt.overrides.get(name, {}))
    result = {"name": name, "kind": "transfer", **entry(ok, clean_acc), "n_attacked": len(y),
             "time_s": elapsed, "time_per_attacked_s": elapsed / max(1, len(y)),
             "settings": {**settings, "seed": opt.seed, "examples": PER_SOURCE,
                          "examples_sha256": info["examples_sha256"],
                          "crafted_on_points": len(y)},
             # seconds the crafting on the source took (once, wherever it ran), its file
             "crafting": {**({"time_s": info["crafting_s"]} if "crafting_s" in info else {}),
                          **{k: info[k] for k in ("file", "stored") if k in info}}}
    checks = [sanity.check_perturbation(name, x, examples, opt.eps),
              sanity.check_rescore(name, scored, rescored)]
    return result, ok, checks
