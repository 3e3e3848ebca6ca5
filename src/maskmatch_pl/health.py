"""Pseudo-label health without masks: is the teacher teaching every class?

A user's unlabeled images have no masks, so pseudo-label accuracy cannot be measured. What can
be measured, and what gives a collapse away, is:

- per class, its **share of the confident pseudo-label pixels** against its share of the labeled
  pixels (the only class distribution known): a class whose confident share falls far below its
  labeled share has **vanished** from the unlabeled loss; a class that holds nearly every
  confident pixel has **taken over** (the collapse to background on small-foreground data);
- per class, the **confident fraction**: of the pixels the teacher gives that class, the share
  confident enough to reach a loss (how sure the teacher is of it);
- the teacher's **agreement with itself** under a horizontal flip of the weak view (scale 1, its
  own flip averaging off): the share of pixels whose arg max stays the same, over all pixels
  and over the confident ones, a proxy for accuracy that needs no mask. How well it tracks the
  true pseudo-label accuracy was measured on the testbeds (benchmarks/RESULTS.md, "Weak
  teachers"); it does not see a collapse (a teacher that calls everything background agrees
  with itself), which the class shares do.

The states are torchmetrics sums (synced under DDP); :meth:`PseudoLabelHealth.problems` turns
them into problems, and :class:`HealthWarnings` decides which are worth a warning (one line per check,
with what to try). The cut-offs below are judgement; the warning rule was measured against the
recorded runs' outcomes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torchmetrics import Metric

from .targets import IGNORE_INDEX, PseudoLabels

VANISHED_RATIO = 0.1  # confident share below 10 % of the labeled share
TAKEOVER_RATIO = 0.25  # the other classes together below 25 % of their labeled share
MIN_LABELED_SHARE = 0.001  # classes rarer than this in the labeled masks are not judged
GRACE = 0.5  # no warning before this share of the planned steps (HealthWarnings; RESULTS, "The health monitor")


def class_counts(labels: torch.Tensor, keep: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Float64 ``C`` counts of the ``labels`` (any shape, values 0..C-1 where ``keep``) at the pixels
    where ``keep`` is True. Written with ``index_add_`` rather than boolean indexing and ``bincount``,
    whose output sizes depend on the data and so wait for the device on every step."""
    classes = labels.long().clamp(0, num_classes - 1).flatten()
    counts = torch.zeros(num_classes, dtype=torch.float64, device=labels.device)
    return counts.index_add_(0, classes, keep.flatten().double())


@dataclass(frozen=True)
class HealthProblem:
    """One class found at one check: ``kind`` ``vanished`` or ``takeover`` with the class's share of
    the confident pseudo-label pixels and of the labeled pixels (fractions in [0, 1]), or
    ``no_confident`` (no class, shares 0): no pseudo-label pixel was confident."""

    kind: str
    class_name: str = ""
    confident_share: float = 0.0
    labeled_share: float = 0.0


def find_problems(
    labeled_share: Sequence[float],
    confident_share: Sequence[float],
    class_names: Sequence[str],
    confident_pixels: float = 1.0,
) -> list[HealthProblem]:
    """The problems of one check, from its ``C`` class shares (labeled pixels and confident
    pseudo-label pixels, each summing to 1) and its count of confident pixels: a class with at
    least ``MIN_LABELED_SHARE`` of the labeled pixels has **vanished** when its confident share is
    under ``VANISHED_RATIO`` times its labeled share, and has **taken over** when the other classes
    together hold under ``TAKEOVER_RATIO`` times their labeled share."""
    if confident_pixels == 0:
        return [HealthProblem("no_confident")]
    found = []
    for name, labeled, confident in zip(class_names, map(float, labeled_share), map(float, confident_share)):
        if labeled < MIN_LABELED_SHARE:
            continue
        if confident < VANISHED_RATIO * labeled:
            found.append(HealthProblem("vanished", name, confident, labeled))
        if 1 - labeled >= MIN_LABELED_SHARE and 1 - confident < TAKEOVER_RATIO * (1 - labeled):
            found.append(HealthProblem("takeover", name, confident, labeled))
    return found


class HealthWarnings:
    """When a problem is worth a warning: only from ``grace`` of the planned steps on, and only when
    the same problem (kind and class) was also found at the check before. Early in training a
    teacher that is not yet sure of a class is still learning it; a collapse persists. The rule was
    chosen by replaying it over recorded runs (benchmarks/RESULTS.md, "The health monitor against
    the runs' outcomes"; ``experiments/health_replay.py``). The last check's problems are not saved in
    checkpoints: after a resume, the first check only records.

    Args:
        grace: share of the planned optimiser steps (``trainer.estimated_stepping_batches``) before
            which nothing is reported, in [0, 1]. A run without a planned number of steps (infinite
            ``estimated_stepping_batches``) is judged as if past the grace.
    """

    def __init__(self, grace: float = GRACE) -> None:
        self.grace = grace
        self.previous: set[tuple[str, str]] = set()

    def check(self, problems: Sequence[HealthProblem], progress: float) -> list[HealthProblem]:
        """The ``problems`` of this check to report, at ``progress`` (steps done / steps planned)."""
        persistent = [p for p in problems if (p.kind, p.class_name) in self.previous]
        self.previous = {(p.kind, p.class_name) for p in problems}
        return persistent if progress >= self.grace else []


def warning_message(problems: Sequence[HealthProblem], step: int, remedy: str) -> str:
    """One line for one check's reported ``problems``: the classes by kind, their shares, and ``remedy``."""

    def listed(kind: str) -> str:
        return ", ".join(
            f"{p.class_name!r} ({p.confident_share:.2%} of the confident pixels, {p.labeled_share:.2%} of the labeled)"
            for p in problems
            if p.kind == kind
        )

    parts = []
    if any(p.kind == "no_confident" for p in problems):
        parts.append(
            "no pseudo-label pixel was confident enough to reach a loss, so the unlabeled images teach nothing"
        )
    if vanished := listed("vanished"):
        parts.append(
            "vanished from the confident pseudo-labels, so the unlabeled loss teaches them as other classes: "
            + vanished
        )
    if takeover := listed("takeover"):
        parts.append(f"took over the confident pseudo-labels (a collapse): {takeover}")
    return f"pseudo-label health at step {step}, for two checks in a row: " + "; ".join(parts) + f". {remedy}"


def remedy(threshold_rule: str, problems: Sequence[HealthProblem] = ()) -> str:
    """What to try against ``problems``, given the ``pseudo_labels.threshold_rule`` in use (what was
    measured to help: benchmarks/RESULTS.md, "Threshold rules on every testbed")."""
    section = "docs/guide.md 'Pseudo-label health (no masks needed)' has the measurements"
    knob = "`--model.pseudo_labels.threshold_rule="
    if any(p.kind == "takeover" for p in problems) and threshold_rule != "freematch_prior":
        return (
            f"Try {knob}freematch_prior` (it raises the threshold of the class that took over: the best measured "
            f"on small-foreground data), or more labeled images of the other classes; {section}"
        )
    if threshold_rule in ("fixed", "freematch"):
        return (
            f"Try {knob}prior_lowered` (the default: tau lowered for the classes the teacher under-predicts), "
            f"or more labeled images of those classes; {section}"
        )
    if threshold_rule == "prior_lowered":
        return f"Try {knob}freematch_prior`, or more labeled images of those classes; {section}"
    return f"More labeled images of those classes are what is left to try; {section}"


class PseudoLabelHealth(Metric):
    """Sums, between two resets, of labeled pixels per class, pseudo-label pixels per class (all
    and confident) and flip agreements; see the module docstring for what they mean.

    Args:
        num_classes: number of classes ``C``.
    """

    full_state_update = False

    def __init__(self, num_classes: int) -> None:
        super().__init__(sync_on_compute=True)
        self.num_classes = num_classes
        for name, size in (("labeled", num_classes), ("predicted", num_classes), ("confident", num_classes)):
            self.add_state(name, torch.zeros(size, dtype=torch.float64), dist_reduce_fx="sum")
        for name in ("agree", "agree_confident", "flip_pixels", "flip_confident"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(  # type: ignore[override]
        self,
        labeled_mask: torch.Tensor,
        targets: PseudoLabels,
        threshold: float | torch.Tensor,
        flip_pair: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        """Count one step: ``labeled_mask`` ``B x H x W`` (255 ignored), the weak views' ``targets``
        with the ``threshold`` used, and optionally the teacher's arg max on the weak views and on
        their mirror images, mirrored back (two ``B x H x W``)."""
        self.labeled += class_counts(labeled_mask, labeled_mask != IGNORE_INDEX, self.num_classes)
        valid, confident = targets.valid, targets.confident(threshold)
        labels = targets.pseudo_label.long()
        self.predicted += class_counts(labels, valid, self.num_classes)
        self.confident += class_counts(labels, confident, self.num_classes)
        if flip_pair is not None:
            same = flip_pair[0] == flip_pair[1]
            self.agree += (same & valid).sum()
            self.flip_pixels += valid.sum()
            self.agree_confident += (same & confident).sum()
            self.flip_confident += confident.sum()

    def compute(self) -> dict[str, torch.Tensor]:
        """``labeled_share``, ``confident_share``, ``confident_fraction`` (``C`` each; NaN where a
        class has no pseudo-label pixel), ``flip_agreement``, ``flip_agreement_confident`` (NaN
        without flip checks), and the totals ``labeled_pixels`` and ``confident_pixels``."""
        nan = torch.tensor(float("nan"), dtype=torch.float64, device=self.labeled.device)
        return {
            "labeled_pixels": self.labeled.sum(),
            "confident_pixels": self.confident.sum(),
            "labeled_share": self.labeled / self.labeled.sum().clamp_min(1),
            "confident_share": self.confident / self.confident.sum().clamp_min(1),
            "confident_fraction": torch.where(self.predicted > 0, self.confident / self.predicted.clamp_min(1), nan),
            "flip_agreement": self.agree / self.flip_pixels if self.flip_pixels > 0 else nan,
            "flip_agreement_confident": self.agree_confident / self.flip_confident if self.flip_confident > 0 else nan,
        }

    def problems(self, class_names: Sequence[str]) -> list[HealthProblem]:
        """The problems of this check (:func:`find_problems` over the synced totals: every process decides alike)."""
        values = self.compute()
        if values["labeled_pixels"] == 0:
            return []
        return find_problems(
            values["labeled_share"].tolist(),
            values["confident_share"].tolist(),
            class_names,
            float(values["confident_pixels"]),
        )
