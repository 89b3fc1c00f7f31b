r"""Temperature-scaled contrastive losses: NT-Xent (InfoNCE, SimCLR) and supervised contrastive.

Both are softmax cross-entropies over the cosine similarities of a batch divided by a
temperature tau: each anchor should pick its positive out of a set of candidates. A low tau
makes the softmax sharp, so nearly all the gradient goes to the hardest negatives (those most
similar to the anchor) and the embedding spreads out over the sphere; a high tau weighs all
negatives alike and tolerates hard ones (Wang & Liu, Understanding the Behaviour of
Contrastive Loss, CVPR 2021).

References:
    van den Oord, Li, Vinyals. Representation Learning with Contrastive Predictive Coding.
    arXiv 2018 (InfoNCE).
    Chen, Kornblith, Norouzi, Hinton. A Simple Framework for Contrastive Learning of Visual
    Representations (SimCLR). ICML 2020.
    Khosla, Teterwak, Wang, Sarna, Tian, Isola, Maschinot, Liu, Krishnan. Supervised Contrastive
    Learning. NeurIPS 2020.

Both read the (B, B) cosine matrix through pair masks (all pairs, or a miner's pairs; triplets
are split into their pairs), so ``curve`` and ``forward`` run the same function. ``pos_dist``
and ``neg_dist`` are distances between the normalised embeddings, sqrt(2 - 2 s).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from dml_core.geometry import cosine_similarities, cosine_to_distance, distance_to_cosine
from dml_core.losses.anchor import anchor_output, as_float, mask_pairs, masked_logsumexp, pair_masks
from dml_core.losses.base import Boundary, Loss, LossOutput, mean_active
from dml_core.registry import LOSSES, Params
from dml_core.tuples import Tuples, all_pairs, to_pairs


class TemperatureParams(Params):
    """Parameters of a temperature-scaled contrastive loss."""

    temperature: float = Field(
        0.1,
        gt=0,
        le=1,
        description="tau: logits are cos / tau; a low tau focuses the gradient on hard negatives",
    )


def ntxent_terms(sim: Tensor, neg_count: Tensor, temperature: float) -> Tensor:
    """-log(e^{s_ap/tau} / (e^{s_ap/tau} + sum_n c_an e^{s_an/tau})) for every entry (a, p).

    Args:
        sim: (..., N, M) cosine similarities of anchors (rows) and candidates.
        neg_count: (..., N, M) how often (a, n) is a negative pair (0: not one).
        temperature: tau.

    Returns:
        (..., N, M): the term of (a, p) as a positive pair; 0 in rows without negatives.
    """
    logits = sim / temperature
    is_neg = neg_count > 0
    neg = masked_logsumexp(logits + neg_count.log(), is_neg)[..., None]  # (..., N, 1)
    terms = torch.logaddexp(logits, neg) - logits  # (..., N, M)
    return torch.where(is_neg.any(dim=-1, keepdim=True), terms, 0.0)


def supcon_terms(sim: Tensor, pos_mask: Tensor, neg_mask: Tensor, temperature: float) -> Tensor:
    """Khosla et al., Eq. (2) per anchor: -1/|P(a)| sum_p log softmax over P(a) + N(a) of s/tau.

    Args:
        sim: (..., N, M) cosine similarities of anchors (rows) and candidates.
        pos_mask: (..., N, M) positive pairs.
        neg_mask: (..., N, M) negative pairs.
        temperature: tau.

    Returns:
        (..., N): one term per anchor; 0 for anchors without positives.
    """
    logits = sim / temperature
    log_prob = logits - masked_logsumexp(logits, pos_mask | neg_mask)[..., None]  # (..., N, M)
    n_pos = pos_mask.sum(dim=-1).clamp_min(1)  # (..., N)
    return -(log_prob * pos_mask).sum(dim=-1) / n_pos


def one_pair_each(d_ap: Tensor, d_an: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Cosines (..., 1, 2) of one anchor to a positive at d_ap and a negative at d_an; masks."""
    d = torch.stack(torch.broadcast_tensors(d_ap, d_an), dim=-1)  # (..., 2)
    sim = distance_to_cosine(d).unsqueeze(-2)  # (..., 1, 2)
    pos_mask = torch.tensor([[True, False]], device=sim.device)  # (1, 2)
    return sim, pos_mask, ~pos_mask


@LOSSES.register(
    name="ntxent",
    params=TemperatureParams,
    paper="van den Oord et al. 2018 (InfoNCE); Chen et al. SimCLR: A Simple Framework for "
    "Contrastive Learning of Visual Representations. ICML 2020",
    equation=r"\ell_{a,p} = -\log \frac{e^{s_{ap} / \tau}}{e^{s_{ap} / \tau} + "
    r"\sum_{n \in N(a)} e^{s_{an} / \tau}}",
    kind="pairs",
)
class NTXentLoss(Loss):
    r"""NT-Xent (normalised temperature-scaled cross-entropy, InfoNCE): pick the positive out.

    Chen et al. 2020, Eq. (1) (van den Oord et al. 2018, Eq. 4): for a positive pair (a, p),
    l_ap = -log(e^{s_ap / tau} / (e^{s_ap / tau} + \sum_{n in N(a)} e^{s_an / tau})), with s the
    cosine similarity and N(a) the negatives of anchor a. In SimCLR a's only positive is the
    other view of the same image; with labels, every same-label pair is a positive pair with
    its own term, and the other positives stay out of its denominator (as in
    pytorch-metric-learning). Given a miner's pairs, only those are used. The temperature tau
    sets how hard the loss looks: the weight of negative n in the gradient is its softmax
    share e^{s_an / tau} / Z, so a low tau (0.1) concentrates it on the negatives nearest the
    anchor and spreads the classes over the sphere; a high tau treats all negatives alike.
    One term per positive pair (0 when its anchor has no negative); the loss is their mean.
    """

    hardness_parameter = "temperature"

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, emb: Tensor, labels: Tensor, tuples: Tuples | None = None) -> LossOutput:
        """Loss over the given pairs (or all pairs); repeated pairs count as often as given."""
        pairs = all_pairs(labels) if tuples is None else to_pairs(tuples)
        sim = cosine_similarities(as_float(emb))  # (B, B)
        neg_count = torch.zeros_like(sim).index_put_(
            (pairs.anchor_neg, pairs.neg), torch.ones_like(pairs.neg, dtype=sim.dtype), True
        )  # (B, B)
        terms = ntxent_terms(sim, neg_count, self.temperature)[pairs.anchor_pos, pairs.pos]
        loss = terms.sum() / max(len(terms), 1)
        return anchor_output(loss, terms, pairs, cosine_to_distance(sim))

    def curve(self, d_ap: Tensor, d_an: Tensor) -> Tensor:
        """l_ap of one anchor with a positive at d_ap and one negative at d_an (unit sphere)."""
        sim, _, neg_mask = one_pair_each(d_ap, d_an)
        return ntxent_terms(sim, neg_mask.to(sim.dtype), self.temperature)[..., 0, 0]

    def decision_boundaries(self, num: int = 401) -> tuple[Boundary, ...]:
        """The softmax's tie: the negative as similar as the positive, d(a,p) = d(a,n)."""
        return (Boundary.shifted("d(a,p) = d(a,n)", 0.0, num),)


@LOSSES.register(
    name="supcon",
    params=TemperatureParams,
    paper="Khosla et al. Supervised Contrastive Learning. NeurIPS 2020",
    equation=r"\ell_a = -\frac{1}{|P(a)|} \sum_{p \in P(a)} \log \frac{e^{s_{ap} / \tau}}"
    r"{\sum_{k \in P(a) \cup N(a)} e^{s_{ak} / \tau}}",
    kind="pairs",
)
class SupConLoss(Loss):
    r"""Supervised contrastive loss: each anchor's softmax over the batch, averaged over positives.

    Khosla et al. 2020, Eq. (2) (L^sup_out): l_a = -1/|P(a)| \sum_{p in P(a)} log(e^{s_ap / tau}
    / \sum_{k in P(a) + N(a)} e^{s_ak / tau}), with s the cosine similarity, P(a) the positives
    and N(a) the negatives of anchor a. Unlike NT-Xent, all positives share one denominator:
    an anchor is only at rest when every positive is much closer than every negative, which
    pulls whole classes together. The temperature tau weighs hard negatives as in NT-Xent
    (Khosla et al. use 0.1). One term per anchor (0 without positives); the loss is the mean
    of the non-zero terms, and 0 for a batch without negative pairs, as in
    pytorch-metric-learning.
    """

    hardness_parameter = "temperature"

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, emb: Tensor, labels: Tensor, tuples: Tuples | None = None) -> LossOutput:
        """Loss over the given pairs (or all pairs); repeated pairs count once."""
        sim = cosine_similarities(as_float(emb))  # (B, B)
        pos_mask, neg_mask = pair_masks(labels, tuples)  # (B, B) each
        terms = supcon_terms(sim, pos_mask, neg_mask, self.temperature)  # (B,)
        loss = mean_active(terms) * neg_mask.any()
        return anchor_output(loss, terms, mask_pairs(pos_mask, neg_mask), cosine_to_distance(sim))

    def curve(self, d_ap: Tensor, d_an: Tensor) -> Tensor:
        """l_a of one anchor with one positive at d_ap and one negative at d_an (unit sphere)."""
        sim, pos_mask, neg_mask = one_pair_each(d_ap, d_an)
        return supcon_terms(sim, pos_mask, neg_mask, self.temperature)[..., 0]

    def decision_boundaries(self, num: int = 401) -> tuple[Boundary, ...]:
        """The softmax's tie: the negative as similar as the positive, d(a,p) = d(a,n)."""
        return (Boundary.shifted("d(a,p) = d(a,n)", 0.0, num),)
