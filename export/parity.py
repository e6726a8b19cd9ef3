"""The comparator: figures and a verdict for two runtimes' outputs on the same inputs.

Used by the export's parity gate and by ``medge parity``. numpy only.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from medge.edge.numeric import softmax


@dataclass(frozen=True)
class Tolerance:
    max_abs_logit: float = 1e-3  # largest allowed |logit difference| over all inputs and classes
    min_top1_agreement: float = 1.0  # share of inputs whose top-1 class must agree
    near_threshold: float = 0.05  # report inputs whose top-two probabilities are this close


def compare(reference: np.ndarray, candidate: np.ndarray, names: list[str], classes: list[str],
            tol: Tolerance = Tolerance(), reference_name: str = "pytorch", candidate_name: str = "cv2.dnn") -> dict:
    """Compare two (N, C) logit arrays.

    Returns:
        a JSON-able report: max/mean |delta| of logits and probabilities, cosine
        similarity (min, mean), top-1 agreement, the inputs whose label flips, the
        inputs within ``near_threshold`` of the decision boundary, per-class
        figures (by the reference's label), the tolerance, ``passed`` and the
        reasons it failed.
    """
    ref = np.asarray(reference, np.float64)
    cand = np.asarray(candidate, np.float64)
    if ref.shape != cand.shape or ref.ndim != 2 or len(names) != len(ref):
        raise ValueError(f"cannot compare shapes {ref.shape} and {cand.shape} with {len(names)} names")
    d_logit = np.abs(ref - cand)
    p_ref, p_cand = softmax(ref), softmax(cand)
    d_prob = np.abs(p_ref - p_cand)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    cosine = np.where(norms > 0, (ref * cand).sum(1) / np.where(norms > 0, norms, 1), 1.0)
    top_ref, top_cand = ref.argmax(1), cand.argmax(1)
    agree = top_ref == top_cand
    top2 = np.sort(p_ref, axis=1)[:, -2:] if ref.shape[1] > 1 else np.ones((len(ref), 2))
    margin = top2[:, 1] - top2[:, 0]
    flips = [{"input": names[i], reference_name: classes[top_ref[i]], candidate_name: classes[top_cand[i]],
              "max_abs_logit": float(d_logit[i].max())} for i in np.flatnonzero(~agree)]
    near = [{"input": names[i], "label": classes[top_ref[i]], "margin": float(margin[i])}
            for i in np.flatnonzero(margin < tol.near_threshold)]
    per_class = {}
    for k, c in enumerate(classes):
        sel = top_ref == k
        if sel.any():
            per_class[c] = {"n": int(sel.sum()), "max_abs_logit": float(d_logit[sel].max()),
                            "top1_agreement": float(agree[sel].mean())}
    n = len(ref)
    report = {
        "reference": reference_name, "candidate": candidate_name, "n": n,
        "logits": {"max_abs": float(d_logit.max()) if n else 0.0, "mean_abs": float(d_logit.mean()) if n else 0.0},
        "probabilities": {"max_abs": float(d_prob.max()) if n else 0.0, "mean_abs": float(d_prob.mean()) if n else 0.0},
        "cosine": {"min": float(cosine.min()) if n else 1.0, "mean": float(cosine.mean()) if n else 1.0},
        "top1_agreement": float(agree.mean()) if n else 1.0,
        "label_flips": flips,
        "near_threshold": near,
        "per_class": per_class,
        "tolerance": asdict(tol),
    }
    failures = []
    if n == 0:
        failures.append("no inputs were compared")
    if report["logits"]["max_abs"] > tol.max_abs_logit:
        failures.append(f"max |delta logit| {report['logits']['max_abs']:.3g} > {tol.max_abs_logit:g}")
    if report["top1_agreement"] < tol.min_top1_agreement:
        failures.append(f"top-1 agreement {report['top1_agreement']:.4f} < {tol.min_top1_agreement:g} "
                        f"({len(flips)} label flip(s))")
    report["passed"] = not failures
    report["failures"] = failures
    return report


def summary_line(report: dict) -> str:
    """One line for a terminal."""
    return (f"{report['reference']} vs {report['candidate']} on {report['n']} inputs: "
            f"max |dlogit| {report['logits']['max_abs']:.2e}, max |dprob| {report['probabilities']['max_abs']:.2e}, "
            f"cosine min {report['cosine']['min']:.6f}, top-1 agreement {report['top1_agreement']:.2%}"
            f" -> {'PASS' if report['passed'] else 'FAIL: ' + '; '.join(report['failures'])}")
