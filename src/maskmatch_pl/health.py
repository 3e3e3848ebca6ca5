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
them into warnings with what to try. The cut-offs below are judgement, not calibrated.
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


def class_counts(labels: torch.Tensor, keep: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Float64 ``C`` counts of the ``labels`` (any shape, values 0..C-1 where ``keep``) at the pixels
    where ``keep`` is True. Written with ``index_add_`` rather than boolean indexing and ``bincount``,
    whose output sizes depend on the data and so wait for the device on every step."""
    classes = labels.long().clamp(0, num_classes - 1).flatten()
    counts = torch.zeros(num_classes, dtype=torch.float64, device=labels.device)
    return counts.index_add_(0, classes, keep.flatten().double())


@dataclass(frozen=True)
class HealthProblem:
    """One warning: ``kind`` ``vanished``, ``takeover`` or ``no_confident``, the class (empty for
    ``no_confident``), and the message."""

    kind: str
    class_name: str
    message: str


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
        """Classes that vanished from the confident pseudo-labels, or took them over, with what to try."""
        values = self.compute()  # synced totals: every process decides alike
        labeled, confident = values["labeled_share"], values["confident_share"]
        if values["labeled_pixels"] == 0:
            return []
        remedy = (
            "try class-wise thresholds, `--model.pseudo_labels.threshold_rule=freematch_prior` (on small-foreground "
            "data they turned this collapse into a gain over supervised), or more labeled images of the rare classes; "
            "docs/guide.md 'Pseudo-label health (no masks needed)' has the measurements"
        )
        if values["confident_pixels"] == 0:
            return [
                HealthProblem(
                    "no_confident",
                    "",
                    "no pseudo-label pixel was confident enough to reach a loss: the unlabeled images teach nothing; "
                    + remedy,
                )
            ]
        found = []
        for index, name in enumerate(class_names):
            if labeled[index] < MIN_LABELED_SHARE:
                continue
            if confident[index] < VANISHED_RATIO * labeled[index]:
                found.append(
                    HealthProblem(
                        "vanished",
                        name,
                        f"class {name!r} has vanished from the confident pseudo-labels: {confident[index]:.2%} of "
                        f"the confident pixels against {labeled[index]:.2%} of the labeled pixels, so the unlabeled "
                        f"loss teaches it as something else; {remedy}",
                    )
                )
            others_labeled, others_confident = 1 - labeled[index], 1 - confident[index]
            if others_labeled >= MIN_LABELED_SHARE and others_confident < TAKEOVER_RATIO * others_labeled:
                found.append(
                    HealthProblem(
                        "takeover",
                        name,
                        f"class {name!r} has taken over the confident pseudo-labels: {confident[index]:.2%} of the "
                        f"confident pixels against {labeled[index]:.2%} of the labeled pixels (collapse); {remedy}",
                    )
                )
        return found
