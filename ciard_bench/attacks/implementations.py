"""The attacks torchattacks and pyautoattack do not provide as such: CW-Linf, uniform noise,
transfer, and AutoAttack run one sub-attack at a time with a resume file.

Each is a torchattacks ``Attack`` (``attack(x, y) -> x_adv``, inputs in [0, 1]), whose base
class puts the model in eval mode for the attack and restores its mode afterwards. Their
protocol settings are in :mod:`ciard_bench.attacks.protocol`.
"""
from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torchattacks.attack import Attack

from .._compat import import_autoattack
from ..checkpoint import atomic_write_json
from ..errors import UserError
from ..utils import tensor_sha256

log = logging.getLogger(__name__)


def cw_margin_loss(logits: torch.Tensor, labels: torch.Tensor, kappa: float = 50.0) -> torch.Tensor:
    """Per-example CW loss ``-max(z_y - max_{j != y} z_j + kappa, 0)`` (to be maximised)."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
    return -torch.clamp(true - others.max(dim=1).values + kappa, min=0)


class CWLinf(Attack):
    """L-inf PGD on the CW margin loss (confidence ``kappa``), as in CIARD's ``attack_eval.py``.

    Defaults: kappa 50, 30 steps of 2/255, zero start. ``clamp_every_step=True`` is the
    torchattacks convention; the released code clamps to [0, 1] only after the last step.
    """

    def __init__(self, model: torch.nn.Module, eps: float = 8 / 255, alpha: float = 2 / 255,
                 steps: int = 30, kappa: float = 50.0, random_start: bool = False,
                 clamp_every_step: bool = True):
        super().__init__("CWLinf", model)
        self.eps, self.alpha, self.steps, self.kappa = eps, alpha, steps, kappa
        self.random_start, self.clamp_every_step = random_start, clamp_every_step

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        images = images.clone().detach().to(self.device)
        labels = labels.clone().detach().to(self.device)
        adv = images.clone()
        if self.random_start:
            adv = torch.clamp(adv + torch.empty_like(adv).uniform_(-self.eps, self.eps), 0, 1)
        for _ in range(self.steps):
            adv.requires_grad_(True)
            loss = cw_margin_loss(self.get_logits(adv), labels, self.kappa).sum()
            grad = torch.autograd.grad(loss, adv)[0]
            adv = images + torch.clamp(adv.detach() + self.alpha * grad.sign() - images,
                                       -self.eps, self.eps)
            if self.clamp_every_step:
                adv = torch.clamp(adv, 0, 1)
        return torch.clamp(adv, 0, 1).detach()


class UniformNoise(Attack):
    """Random uniform noise in the eps ball, ``draws`` tries per point (a sanity baseline).

    Returns the first draw that the model misclassifies, else the last draw.
    """

    def __init__(self, model: torch.nn.Module, eps: float = 8 / 255, draws: int = 20):
        super().__init__("UniformNoise", model)
        self.eps, self.draws = eps, draws

    @torch.no_grad()
    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        images, labels = images.to(self.device), labels.to(self.device)
        best = images.clone()
        alive = torch.ones(len(images), dtype=torch.bool, device=images.device)
        for _ in range(self.draws):
            noise = torch.empty_like(images).uniform_(-self.eps, self.eps)
            cand = torch.clamp(images + noise, 0, 1)
            best[alive] = cand[alive]
            alive &= self.get_logits(cand).argmax(1) == labels
        return best


class FunctionAttack(Attack):
    """A plugin's own attack as a torchattacks ``Attack``: ``fn(model, images, labels,
    settings) -> adversarial images`` in [0, 1] (model in eval mode, as every attack here).
    The result is checked: same shape, inside the eps ball and [0, 1], else a one-line error."""

    def __init__(self, model: torch.nn.Module, fn, settings: dict):
        super().__init__(getattr(fn, "__name__", "FunctionAttack"), model)
        self.fn, self.attack_settings = fn, dict(settings)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        images, labels = images.to(self.device), labels.to(self.device)
        adv = self.fn(self.model, images, labels, self.attack_settings)
        eps = float(self.attack_settings.get("eps", 1.0))
        if not isinstance(adv, torch.Tensor) or adv.shape != images.shape:
            raise UserError(f"attack {self.attack_settings.get('name')!r}: its function returned "
                            f"{getattr(adv, 'shape', type(adv).__name__)}; accepted: a tensor of "
                            f"the images' shape {tuple(images.shape)}")
        adv = adv.detach()
        if float((adv - images).abs().max()) > eps + 1e-6 or adv.min() < 0 or adv.max() > 1:
            raise UserError(f"attack {self.attack_settings.get('name')!r}: its examples leave the "
                            f"eps ball ({eps:.4g}) or [0, 1]; accepted: examples inside both")
        return adv


class Transfer(Attack):
    """Examples crafted by ``source_attack`` on its own (source) model; ``model`` is scored."""

    def __init__(self, model: torch.nn.Module, source_attack: Attack):
        super().__init__("Transfer", model)
        self.source_attack = source_attack

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.source_attack(images, labels).to(images.device)


@contextlib.contextmanager
def _frozen(model: torch.nn.Module):
    """Parameters without ``requires_grad`` for the duration (restored after)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class AutoAttackAdapter(Attack):
    """pyautoattack's AutoAttack behind ``attack(x, y) -> x_adv``, with a resume file.

    Runs the sub-attacks of ``settings["attacks"]`` in order, each on the points still robust
    (pyautoattack's cascade). After each sub-attack the robust flags go to ``state_path``
    (JSON); a later call with the same file, points and settings skips finished sub-attacks.
    Points broken before a resume come back unperturbed; ``robust_flags`` is authoritative.
    """

    def __init__(self, model: torch.nn.Module, settings: dict,
                 state_path: str | Path | None = None):
        super().__init__("AutoAttack", model)
        s = self.settings = settings
        device = self.device or torch.device("cpu")
        kwargs = {"attacks": list(s["attacks"])} if s["version"] == "custom" else {}
        aa = import_autoattack()
        self.aa = aa.AutoAttack(model, norm=s["norm"], eps=s["eps"], version=s["version"],
                                device=device, seed=s["seed"], **kwargs)
        self.aa.apgd_targeted.n_target_classes = s["apgd_t_n_target_classes"]
        self.aa.fab.n_target_classes = s["fab_t_n_target_classes"]
        for part in (self.aa.apgd, self.aa.apgd_targeted, self.aa.fab):
            part.n_iter = s["n_iter"]
        self.aa.square.n_queries = s["square_n_queries"]
        self.aa.apgd.n_restarts = s["apgd_n_restarts"]
        self.state_path = Path(state_path) if state_path is not None else None
        self.robust_flags: torch.Tensor | None = None  # per point of the last call
        self.from_state: torch.Tensor | None = None    # broken before a resume: no x_adv
        self.sub_robust: dict[str, int] = {}           # robust points after each sub-attack
        self.restored: list[str] = []

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        images = images.contiguous()  # pyautoattack .view()s gradients shaped like the input
        flags, done = self._restore(images, labels)
        adv = images.clone().detach()
        for name in self.settings["attacks"]:
            if name in done:
                continue
            idx = flags.nonzero().flatten()
            if len(idx):
                self.aa.attacks_to_run = [name]
                with _frozen(self.model):   # FAB calls .backward(): no weight gradients wanted
                    x_sub, _ = self.aa.run_standard_evaluation(
                        images[idx], labels[idx], batch_size=int(self.settings["batch_size"]))
                x_sub = x_sub.to(images.device)
                with torch.no_grad():
                    ok = self._predict(x_sub) == labels[idx].to(self.device)
                broken = idx[~ok.to(idx.device)]
                adv[broken] = x_sub[~ok.to(x_sub.device)]
                flags[broken] = False
            done.append(name)
            self.sub_robust[name] = int(flags.sum())
            self._save(images, labels, flags, done)
        self.robust_flags = flags.clone()
        return adv

    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        bs = int(self.settings["batch_size"])
        return torch.cat([self.get_logits(x[i:i + bs].to(self.device)).argmax(1)
                          for i in range(0, len(x), bs)])

    def _fingerprint(self, images: torch.Tensor, labels: torch.Tensor) -> dict:
        keys = ("eps", "norm", "version", "attacks", "seed", "batch_size", "n_iter",
                "square_n_queries", "apgd_t_n_target_classes", "fab_t_n_target_classes",
                "apgd_n_restarts")
        # content hashes, as the evaluation cache: the same points in another order (or any
        # other points with equal sums) must not resume this state's per-point robust flags
        return {"n": len(labels), "shape": list(images.shape), "dtype": str(images.dtype),
                "labels_sha256": tensor_sha256(labels), "images_sha256": tensor_sha256(images),
                "settings": {k: self.settings[k] for k in keys}}

    def _restore(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, list]:
        self.sub_robust, self.restored = {}, []
        if self.state_path is None or not self.state_path.exists():
            with torch.no_grad():
                flags = (self._predict(images) == labels.to(self.device)).to(images.device)
            self.from_state = torch.zeros_like(flags)
            return flags, []
        state = json.loads(self.state_path.read_text())
        if state.get("fingerprint") != self._fingerprint(images, labels):
            raise UserError(f"AutoAttack state {str(self.state_path)!r} was written for other "
                            "points or settings; delete it or pass another --aa-state")
        flags = torch.tensor([c == "1" for c in state["robust_flags"]], device=images.device)
        self.restored = list(state["done"])
        self.sub_robust = dict(state.get("sub_robust", {}))
        self.from_state = ~flags
        log.info("AutoAttack: resumed from %s after %s", self.state_path, ", ".join(self.restored))
        return flags, list(state["done"])

    def _save(self, images, labels, flags, done) -> None:
        if self.state_path is None:
            return
        atomic_write_json(self.state_path, {
            "format": "ciard-bench/aa-state/2", "fingerprint": self._fingerprint(images, labels),
            "done": done, "sub_robust": self.sub_robust,
            "robust_flags": "".join("1" if f else "0" for f in flags.tolist())})
