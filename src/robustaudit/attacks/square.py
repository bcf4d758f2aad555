"""Square Attack (Andriushchenko et al. 2020, "Square Attack: a query-efficient black-box adversarial
attack via random search"): score-based random search with square-shaped updates.

Section numbers refer to that paper (ECCV 2020, arXiv:1912.00049).
"""

from __future__ import annotations

import contextvars
import math

import torch
import torch.nn as nn

from robustaudit.attacks.base import Attack, AttackKind, attack_loss, success
from robustaudit.attacks.settings import MAX_QUERIES, MAX_RESTARTS, Bool, Choice, Float, Int, Settings
from robustaudit.attacks.engine import Active, IterativeSearch, Problem, Query, view
from robustaudit.core.errors import UserError
from robustaudit.core.norms import clip_to_bounds
from robustaudit.core.rng import keyed_uniform, stream_key
from robustaudit.core.task import CLASSIFICATION, Task
from robustaudit.core.threat import ThreatModel

_LOSSES = ("margin", "ce")
#: iterations of random numbers drawn per keyed call (the keyed generator costs host time per sample,
#: so draws come in blocks; a block is keyed by its index, so draws still depend only on the sample)
_BLOCK = 100
#: where Square.with_queries collects the per-sample query counts of the call under way
_QUERY_SINK: contextvars.ContextVar[list[torch.Tensor] | None] = contextvars.ContextVar(
    "robustaudit_square_queries", default=None
)
# the halving points of p for a budget of 10 000 queries (Sec. 4 / authors' code), rescaled
_P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def p_schedule(it: int, queries: int, p_init: float) -> float:
    """The fraction ``p`` of pixels a square covers at iteration ``it`` (0-based) of ``queries``.

    ``p`` halves after iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 of a 10 000-query
    budget, the points rescaled linearly to ``queries``.

    Example:
        >>> p_schedule(0, 10000, 0.8), p_schedule(11, 10000, 0.8), p_schedule(60, 1000, 0.8)
        (0.8, 0.4, 0.05)
    """
    t = int(it / queries * 10000)
    halvings = sum(t > h for h in _P_HALVINGS)
    return p_init / 2**halvings


def square_side(p: float, height: int, width: int, norm: str) -> int:
    """Side of the square covering a fraction ``p`` of a ``height x width`` image (at least 1 pixel;
    L2: odd and at least 3, so the window has a centre), at most ``min(height, width)``."""
    s = round(math.sqrt(p * height * width))
    if norm == "l2":
        s = max(s, 3)
        s += 1 - s % 2
    return max(1, min(s, height, width))


def _rings(rows: int, cols: int, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``eta^(rows, cols)`` of Sec. 3.2 (L2): centred rectangular rings of weight ``sum 1/(k+1)^2``.

    The entry at Chebyshev distance ``d`` from the centre is ``sum_{k=d}^{n} 1 / (k + 1)^2`` with
    ``n = max(rows, cols) // 2``: mass concentrated at the centre, decaying outwards. Unit L2 norm.
    """
    r = (torch.arange(rows, device=device) - rows // 2).abs()
    c = (torch.arange(cols, device=device) - cols // 2).abs()
    d = torch.maximum(r[:, None], c[None, :])
    n = max(rows, cols) // 2
    weights = 1.0 / torch.arange(1, n + 2, device=device, dtype=dtype) ** 2  # 1/(k+1)^2, k = 0..n
    tail = weights.flip(0).cumsum(0).flip(0)  # tail[d] = sum_{k >= d} 1/(k+1)^2
    out = tail[d.clamp(max=n)]
    return out / out.norm().clamp_min(1e-12)


def eta_window(
    s: int, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The L2 update window of side ``s`` (Sec. 3.2): ``(eta^(k, s); -eta^(s-k, s))`` stacked, ``k = s // 2``.

    Top rows positive, bottom rows negative, each half of unit norm, the whole of unit norm. ``(s, s)``.
    """
    device = torch.device(device)
    k = s // 2
    parts = []
    if k > 0:
        parts.append(_rings(k, s, dtype=dtype, device=device))
    parts.append(-_rings(s - k, s, dtype=dtype, device=device))
    out = torch.cat(parts, dim=0)
    return out / out.norm().clamp_min(1e-12)


def _bands(start: torch.Tensor, size: int, length: int) -> torch.Tensor:
    """``(N,) -> (N, length)`` bool: positions ``start .. start + size - 1`` of each row."""
    pos = torch.arange(length, device=start.device)
    return (pos >= start[:, None]) & (pos < start[:, None] + size)


def _position(u: torch.Tensor, size: int, length: int) -> torch.Tensor:
    """A uniform window start in ``0 .. length - size`` from uniforms ``u`` ``(N,)`` in [0, 1)."""
    return (u * (length - size + 1)).long().clamp(0, length - size)


def _signs(u: torch.Tensor) -> torch.Tensor:
    """Random signs +-1 from uniforms in [0, 1), same shape."""
    return torch.where(u < 0.5, -torch.ones_like(u), torch.ones_like(u))


class Square(Attack, IterativeSearch):
    """Square Attack (Andriushchenko et al. 2020): random search with square updates, logits only.

    Linf (Sec. 3.1): start from vertical stripes of ``+-eps`` (a random sign per column and channel);
    each iteration sets a random square of side ``s`` (covering a fraction ``p`` of the image, ``p``
    from :func:`p_schedule`) to ``x +- eps``, one random sign per channel, and keeps the candidate if
    the loss improved. A candidate that would not change the image is replaced by its opposite signs
    (the authors resample instead, which needs a host sync), so no query is wasted.

    L2 (Sec. 3.2): start from a grid of ``eta`` windows of side ``h // 5`` with random signs, scaled
    to ``||delta||_2 = eps``; each iteration moves the perturbation's mass of a second random square
    into a first one, reshaped by the ``eta`` window (:func:`eta_window`), keeping ``||delta||_2 = eps``
    before clipping to the bounds.

    Only model outputs are used: every forward pass runs under ``torch.no_grad()``. Every random draw
    is keyed by (seed, eps, restart, sample id, iteration), so a sample's search does not depend on
    its batch. A sample leaves the search as soon as it is adversarial (compacting every
    ``compact_every`` iterations); its first adversarial query is returned. Samples never broken get
    their best-loss point over the restarts.

    Settings (keyword-only):
        queries: model evaluations per sample per restart, the initial point included.
        p_init: initial fraction of the image a square covers.
        restarts: random restarts, on samples still robust.
        loss: ``margin`` (logit margin) or ``ce`` (cross-entropy); an update is kept when it improves
            the loss (or makes the sample adversarial).
        early_stop: drop samples from the search once adversarial.
        compact_every: iterations between compactions of the active set (each one a host sync).

    :meth:`with_queries` also returns how many queries each sample used.

    Example:
        >>> from robustaudit.models.catalog import create_model
        >>> from robustaudit.data.digits import digits_split
        >>> from robustaudit.core.threat import ThreatModel
        >>> model = create_model("digits-cnn")
        >>> x, y = digits_split("test").load(range(32))    # (32, 1, 8, 8) in [0, 1], (32,)
        >>> adv, used = Square(queries=200).with_queries(model, x, y, ThreatModel("linf", 0.2))
        >>> adv.shape, used.shape, bool(used.max() <= 200)
        (torch.Size([32, 1, 8, 8]), torch.Size([32]), True)
    """

    name = "square"
    kind = AttackKind.SCORE_BASED
    norms = ("linf", "l2")
    randomized = True
    SETTINGS = Settings(
        Int("queries", 5000, "model evaluations per sample per restart, the initial point included", 1, MAX_QUERIES),
        Float("p_init", 0.8, "initial fraction of the image a square covers", 0, 1, open_low=True),
        Int("restarts", 1, "random restarts, on samples still robust", 1, MAX_RESTARTS),
        Choice("loss", "margin", "margin (logit margin) or ce (cross-entropy)", _LOSSES),
        Bool("early_stop", True, "drop samples from the search once adversarial"),
        Int("compact_every", 10, "iterations between compactions of the active set (a host sync)", 1, MAX_QUERIES),
    )

    def __init__(
        self,
        *,
        queries: int = 5000,
        p_init: float = 0.8,
        restarts: int = 1,
        loss: str = "margin",
        early_stop: bool = True,
        compact_every: int = 10,
    ) -> None:
        Square.SETTINGS.apply(self, locals())

    # ------------------------------------------------------------------ public extras
    def with_queries(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        threat: ThreatModel,
        *,
        targets: torch.Tensor | None = None,
        ids: torch.Tensor | None = None,
        seed: int = 0,
        task: Task = CLASSIFICATION,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Like calling the attack, and also return the queries each sample used: ``(N,)`` int64.

        A sample's count stops at its first adversarial query (later rows sent before the batch is
        compacted are discarded, an attacker would not have made them); at most
        ``queries * restarts``. Zero when nothing was attacked (eps = 0).
        """
        sink: list[torch.Tensor] = []
        token = _QUERY_SINK.set(sink)
        try:
            adv = self(model, x, y, threat, targets=targets, ids=ids, seed=seed, task=task)
        finally:
            _QUERY_SINK.reset(token)
        used = sink[-1].cpu() if sink else torch.zeros(x.shape[0], dtype=torch.long)
        return adv, used

    # ------------------------------------------------------------------ search
    def _run(self, model, x, y, threat, targets, ids, seed, task):  # noqa: D102 - see Attack._run
        if not math.isfinite(threat.eps):
            raise UserError(
                f"attack '{self.name}' needs a finite eps (it searches inside the ball), got {threat.eps}"
            )
        sink = _QUERY_SINK.get()
        token = _QUERY_SINK.set(None)  # a nested call (a model that attacks) must not write into our sink
        try:
            with torch.no_grad():  # score-based: the search never needs a gradient
                runs = (self.stream(seed, threat, restart) for restart in range(self.restarts))
                best = self.search(Problem(model, x, y, threat, targets, ids, task, seed), runs, tallies=("queries",))
        finally:
            _QUERY_SINK.reset(token)
        if sink is not None:
            sink.append(best.totals["queries"])
        return best.x

    # ------------------------------------------------------------------ the engine's hooks
    def _start(self, p: Problem, a: Active, key: int) -> None:
        a["key"] = key  # not a tensor: not compacted
        a["xb"] = self._init(a.x, a.ids, p.threat, key)  # the current point of the search

    def _last(self, p: Problem) -> int:
        return self.queries - 1  # the initial point, then one candidate per iteration

    def _query(self, p: Problem, a: Active, t: int) -> Query:
        point = a["xb"]
        if t > 0:
            it = t - 1
            if it % _BLOCK == 0:
                a["draws"] = self._draws(a.ids, a["key"], it // _BLOCK, p.x)
            u = a["draws"][:, it % _BLOCK]
            side = square_side(p_schedule(it, self.queries, self.p_init), p.x.shape[-2], p.x.shape[-1], p.threat.norm)
            step = self._linf_step if p.threat.norm == "linf" else self._l2_step
            point = step(a.x, a["xb"], u, side, p.threat)
        # one model evaluation per active sample: masked bookkeeping, no host sync
        logits = p.model(point)
        a.tally["queries"] = a.tally["queries"] + a.alive.long()
        a["asked"] = a.alive  # who was alive when asked: the acceptance below is theirs
        return Query(point, logits, attack_loss(p.task, logits, a.y, a.targets, self.loss))

    def _judge(self, p: Problem, a: Active, q: Query) -> tuple[torch.Tensor, torch.Tensor, None]:
        return success(p.task, q.logits, a.y, a.targets), q.obj, None

    def _advance(self, p: Problem, a: Active, t: int, q: Query) -> None:
        if t == 0:
            a["cur"] = q.obj
            return
        # random search: keep the candidate if it improves the loss or is adversarial
        accept = a["asked"] & ((q.obj > a["cur"]) | a.done)
        a["xb"] = torch.where(view(accept, q.point), q.point, a["xb"])
        a["cur"] = torch.where(accept, q.obj, a["cur"])

    def _draws(self, sids: torch.Tensor, key: int, block: int, x: torch.Tensor) -> torch.Tensor:
        """Uniforms for ``_BLOCK`` iterations: ``(N, _BLOCK, k)``, keyed by (restart key, block, sample).

        Per iteration: Linf uses a position (2) and a sign per channel (C); L2 two positions (4), a
        transpose coin (1) and a sign per channel (C).
        """
        k = x.shape[1] + 5
        return keyed_uniform(
            sids, (_BLOCK, k), stream_key(key, "iter", block), device=x.device, dtype=x.dtype
        )

    # ------------------------------------------------------------------ Linf
    def _init(self, xs: torch.Tensor, sids: torch.Tensor, threat: ThreatModel, key: int) -> torch.Tensor:
        """The starting point of a restart, keyed by sample id. ``(N, C, H, W) -> (N, C, H, W)``."""
        n, c, h, w = xs.shape
        if threat.norm == "linf":
            # Sec. 3.1: vertical stripes, a random +-eps per column and channel
            u = keyed_uniform(sids, (c, 1, w), stream_key(key, "init"), device=xs.device, dtype=xs.dtype)
            return clip_to_bounds(xs + threat.eps * _signs(u), threat.bounds)
        # Sec. 3.2: a grid of eta windows of side h // 5, random sign per window and channel
        s = max(min(h, w) // 5, 1)
        rows = [r for r in range(max((h - 5 * s) // 2, 0), h - s + 1, s)]
        cols = [cc for cc in range(max((w - 5 * s) // 2, 0), w - s + 1, s)]
        tiles = [(r, cc) for r in rows for cc in cols]
        u = keyed_uniform(
            sids, (len(tiles), c + 1), stream_key(key, "init"), device=xs.device, dtype=xs.dtype
        )
        eta = eta_window(s, dtype=xs.dtype, device=xs.device)
        delta = torch.zeros_like(xs)
        for t, (r, cc) in enumerate(tiles):
            window = torch.where((u[:, t, 0] < 0.5).view(-1, 1, 1, 1), eta.T, eta)  # (N, 1, s, s)
            delta[:, :, r : r + s, cc : cc + s] = window * _signs(u[:, t, 1:]).view(n, c, 1, 1)
        delta = delta / delta.reshape(n, -1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return clip_to_bounds(xs + threat.eps * delta, threat.bounds)

    @staticmethod
    def _linf_step(
        xs: torch.Tensor, xb: torch.Tensor, u: torch.Tensor, s: int, threat: ThreatModel
    ) -> torch.Tensor:
        """Sec. 3.1, Algorithm 2: a random ``s x s`` square set to ``x +- eps`` (one sign per channel)."""
        n, c, h, w = xs.shape
        inside = (
            _bands(_position(u[:, 0], s, h), s, h)[:, :, None]
            & _bands(_position(u[:, 1], s, w), s, w)[:, None, :]
        )[:, None]  # (N, 1, H, W)
        sign = _signs(u[:, 5 : 5 + c]).view(n, c, 1, 1)
        cand = torch.where(inside, clip_to_bounds(xs + threat.eps * sign, threat.bounds), xb)
        # a candidate equal to the current point wastes a query: the opposite signs always change it
        same = ~(cand != xb).reshape(n, -1).any(dim=1)
        flipped = torch.where(inside, clip_to_bounds(xs - threat.eps * sign, threat.bounds), xb)
        return torch.where(same.view(-1, 1, 1, 1), flipped, cand)

    # ------------------------------------------------------------------ L2
    @staticmethod
    def _l2_step(
        xs: torch.Tensor, xb: torch.Tensor, u: torch.Tensor, s: int, threat: ThreatModel
    ) -> torch.Tensor:
        """Sec. 3.2, Algorithm 3: move the mass of window 2 into window 1, keeping ``||delta||_2 = eps``."""
        n, c, h, w = xs.shape
        dev = xs.device
        delta = xb - xs
        r1, c1 = _position(u[:, 0], s, h), _position(u[:, 1], s, w)
        r2, c2 = _position(u[:, 2], s, h), _position(u[:, 3], s, w)
        win1 = (_bands(r1, s, h)[:, :, None] & _bands(c1, s, w)[:, None, :])[:, None]  # (N, 1, H, W)
        win2 = (_bands(r2, s, h)[:, :, None] & _bands(c2, s, w)[:, None, :])[:, None]
        # gather window 1 of every sample at its own position: (N, C, s, s)
        ar = torch.arange(s, device=dev)
        index = (
            torch.arange(n, device=dev).view(n, 1, 1, 1),
            torch.arange(c, device=dev).view(1, c, 1, 1),
            (r1[:, None] + ar).view(n, 1, s, 1),
            (c1[:, None] + ar).view(n, 1, 1, s),
        )
        old = delta[index]
        old_norm = old.pow(2).sum(dim=(2, 3), keepdim=True).sqrt()  # per channel
        norm_image = delta.reshape(n, -1).norm(dim=1).view(n, 1, 1, 1)
        norm_union = (delta * (win1 | win2)).pow(2).sum(dim=(2, 3), keepdim=True).sqrt()  # per channel
        eta = eta_window(s, dtype=xs.dtype, device=dev)
        shape = torch.where((u[:, 4] < 0.5).view(n, 1, 1, 1), eta.T, eta)  # a random orientation
        new = shape * _signs(u[:, 5 : 5 + c]).view(n, c, 1, 1) + old / (old_norm + 1e-12)
        # window 1 takes the mass of both windows plus the budget left (eps^2 - ||delta||^2, split over
        # channels), so that after zeroing window 2 the whole perturbation has norm eps again
        budget = ((threat.eps**2 - norm_image**2).clamp_min(0) / c + norm_union**2).sqrt()
        new = new / (new.pow(2).sum(dim=(2, 3), keepdim=True).sqrt() + 1e-12) * budget
        moved = torch.where(win2, torch.zeros_like(delta), delta).index_put(index, new)
        moved = moved / moved.reshape(n, -1).norm(dim=1).clamp_min(1e-12).view(n, 1, 1, 1) * threat.eps
        return clip_to_bounds(xs + moved, threat.bounds)


__all__ = ["Square", "eta_window", "p_schedule", "square_side"]
