"""The model card's figures for people: names instead of the manifest's keys, three decimals, intervals as
"0.400 (0.264 to 0.554)", shares as percentages, verdicts as words, and each group of figures at its decision rule.

The manifest keeps keys and full precision for programs (``GET /api/v1/model`` returns them as they are); the card
(``page.card_html``) shows the same figures through these helpers, in the page's language (``texts.TEXT``).
Training's figures are at argmax, the operating point's at its threshold: ``rules_differ_html`` says why they differ.
Every value is escaped here; each helper returns HTML, or (label, HTML) rows for the card's key-value tables.
"""
from __future__ import annotations

import html

from medge.edge.golive.wording import RULES_DIFFER, figure_text, number_text, percent_text, rules_differ_text

TRAINING_COLUMNS = ("accuracy", "balanced_accuracy", "auc", "loss")  # one row per split, at argmax
OPERATING_POINT_FIGURES = ("auc", "sensitivity", "specificity", "ppv", "npv", "brier", "ece")
RUNTIME_NAMES = {"pytorch": "PyTorch"}
PARITY_INPUTS = {"val images": "parity_inputs_val", "synthetic images": "parity_inputs_synthetic"}  # the export's words


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def name(key: str, t: dict) -> str:
    """A figure's name in the page's language ("ppv" -> "positive predictive value"); unknown keys with spaces."""
    return t.get(f"figure_{key}", key.replace("_", " "))


def small_text(v) -> str:
    """A difference close to zero, where three decimals would say 0.000: two significant digits (``6.2e-06``)."""
    return f"{v:.2g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "n/a"


def operating_point_figure_rows(validation: dict, t: dict) -> list[tuple[str, str]]:
    """The operating point's validation figures, named, with their 95% CIs."""
    return [(name(k, t), _e(figure_text(validation[k], to=t["interval_to"]))) for k in OPERATING_POINT_FIGURES
            if k in validation]


def rules_differ_html(op: dict, t: dict) -> str:
    """Why the training metrics (argmax) differ from the operating point's figures, in the page's language."""
    templates = {k: t[f"rules_differ_{k}"] for k in RULES_DIFFER}
    return _e(rules_differ_text(op["positive"], op["threshold"], templates))


def training_html(training: dict, classes: list[str], t: dict) -> str:
    """Training's figures at argmax: a row per split, then a row per split and class (sensitivity, specificity and
    what argmax labelled that class's images as)."""
    metrics = training.get("metrics") or {}
    head = "".join(f"<th>{_e(h)}</th>" for h in (t["split"], t["images"], *(name(k, t) for k in TRAINING_COLUMNS)))
    rows = [[_split(s, t), _count(v.get("n")), *(number_text(v.get(k)) for k in TRAINING_COLUMNS)]
            for s, v in metrics.items()]
    per_class_head = "".join(f"<th>{_e(h)}</th>" for h in (t["split"], t["class"], name("sensitivity", t),
                                                             name("specificity", t), t["labelled_as"]))
    per_class = [[_split(s, t), c, number_text((v.get("sensitivity") or {}).get(c)),
                  number_text((v.get("specificity") or {}).get(c)), _labelled_as(v.get("confusion"), k, classes)]
                 for s, v in metrics.items() if isinstance(v.get("sensitivity"), dict) for k, c in enumerate(classes)]
    rule = f'<p id="medge-training-rule">{_e(t["training_rule"].format(epoch=training.get("epoch", "n/a")))}</p>'
    return (rule + _table(head, rows, "medge-training")
            + (_table(per_class_head, per_class, "medge-training-classes") if per_class else ""))


def _table(head: str, rows: list[list], css_id: str) -> str:
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="medge-table" id="{css_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _split(split: str, t: dict) -> str:
    return t.get(f"split_{split}", split)


def _count(n) -> str:
    return str(n) if isinstance(n, int) else "n/a"


def _labelled_as(confusion, k: int, classes: list[str]) -> str:
    """Row k of the confusion matrix (truth k) as "disease 6, normal 4": what argmax called that class's images."""
    if not isinstance(confusion, list) or k >= len(confusion) or len(confusion[k]) != len(classes):
        return "n/a"
    return ", ".join(f"{c} {n}" for c, n in zip(classes, confusion[k], strict=True))


def parity_rows(parity: dict, t: dict) -> list[tuple[str, str]]:
    """The export's parity report as named rows: what was compared, the differences, agreement, by class, by engine."""
    if not parity:
        return []
    tol = parity.get("tolerance") or {}
    logits, probs = parity.get("logits") or {}, parity.get("probabilities") or {}
    ref, cand = parity.get("reference", "pytorch"), parity.get("candidate", "cv2.dnn")
    rows = [(t["parity_compared"], t["parity_compared_value"].format(
                reference=RUNTIME_NAMES.get(ref, ref), candidate=cand, n=parity.get("n", "n/a"),
                inputs=_inputs(parity.get("inputs"), t)).strip()),
            (t["parity_logit"], t["parity_logit_value"].format(max=small_text(logits.get("max_abs")),
                                                               mean=small_text(logits.get("mean_abs")),
                                                               tol=small_text(tol.get("max_abs_logit")))),
            (t["parity_probability"], t["parity_probability_value"].format(max=small_text(probs.get("max_abs")),
                                                                           mean=small_text(probs.get("mean_abs")))),
            (t["parity_cosine"], number_text((parity.get("cosine") or {}).get("min"), 6)),
            (t["parity_agreement"], t["parity_agreement_value"].format(
                share=percent_text(parity.get("top1_agreement")), required=percent_text(tol.get("min_top1_agreement")))),
            (t["parity_flips"], _count(parity.get("label_flips"))),
            (t["parity_near"], t["parity_near_value"].format(n=_count(parity.get("near_threshold")),
                                                             margin=tol.get("near_threshold", "n/a"))),
            (t["parity_skipped"], _count(parity.get("skipped")))]
    rows += _parity_detail_rows(parity, t)
    return [(label, _e(value)) for label, value in rows]


def _inputs(inputs, t: dict) -> str:
    return t[PARITY_INPUTS[inputs]] if inputs in PARITY_INPUTS else str(inputs or "")


def _verdict(passed, t: dict) -> str:
    return t["parity_passed"] if passed else t["parity_failed"]


def _parity_detail_rows(parity: dict, t: dict) -> list[tuple[str, str]]:
    """By class, by cv2.dnn engine (naming the one the figures above are of), the heatmap features, failures."""
    rows = []
    if parity.get("per_class"):
        rows.append((t["parity_by_class"], "; ".join(
            t["parity_class_value"].format(cls=c, n=v.get("n"), max=small_text(v.get("max_abs_logit")),
                                           share=percent_text(v.get("top1_agreement")))
            for c, v in parity["per_class"].items())))
    if parity.get("engines"):
        worst = t["parity_worst"].format(engine=parity["engine"]) if parity.get("engine") else ""
        rows.append((t["parity_engines"], "; ".join(
            t["parity_engine_value"].format(engine=e, verdict=_verdict(v.get("passed"), t),
                                            max=small_text(v.get("max_abs_logit")), share=percent_text(v.get("top1_agreement")))
            for e, v in parity["engines"].items()) + worst))
    f = parity.get("features")
    if f:
        rows.append((t["parity_features"], t["parity_features_value"].format(
            verdict=_verdict(f.get("passed"), t), max=small_text(f.get("max_rel")), tol=small_text(f.get("rtol")))))
    if parity.get("failures"):
        rows.append((t["parity_failures"], "; ".join(map(str, parity["failures"]))))
    return rows


def findings_html(card: dict, t: dict) -> str:
    """A multi-label bundle's findings (``api.findings_card``): a row per finding with its decision rule (or that it
    is not decided: unsupported, and why), guarantee, temperature, validation cases and figures with their 95% CIs;
    then the macro and micro AUC."""
    figures = [k for k in OPERATING_POINT_FIGURES if any(k in f["validation"] for f in card["findings"])]
    head = "".join(f"<th>{_e(h)}</th>" for h in (t["finding"], t["decision_rule"], t["guarantee"], t["temperature"],
                                                 t["finding_cases"], *(name(k, t) for k in figures)))
    rows = []
    for f in card["findings"]:
        v = f["validation"]
        if f["threshold"] is None:
            rule = t["finding_unsupported"].format(reason=f.get("unsupported") or f["guarantee"])
        else:
            rule = t["finding_rule"].format(threshold=number_text(f["threshold"], 4), criterion=f["criterion"] or "0.5")
        cases = ("n/a" if v.get("cases") is None else
                 t["finding_cases_value"].format(cases=v["cases"], positives=v.get("n_positive"),
                                                 negatives=v.get("n_negative")))
        cells = [f["name"], rule, f["guarantee"], number_text(f["temperature"]), cases,
                 *(figure_text(v[k], to=t["interval_to"]) if k in v else "n/a" for k in figures)]
        state = "undecided" if f["threshold"] is None else "decided"
        rows.append(f'<tr class="medge-finding" data-finding="{_e(f["name"])}" data-state="{state}">'
                    + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
    intro = t["findings_rule"] if card["calibrated"] else t["findings_uncalibrated"]
    val = card.get("validation") or {}
    pooled = [(t[k], _e(figure_text(val[k], to=t["interval_to"]) if k == "micro_auc" else number_text(val[k].get("auc"))))
              for k in ("macro_auc", "micro_auc") if isinstance(val.get(k), dict)]
    kv = ('<table class="medge-kv">' + "".join(f"<tr><td><b>{_e(k)}</b></td><td>{v}</td></tr>" for k, v in pooled)
          + "</table>") if pooled else ""
    return (f'<div id="medge-findings"><p>{_e(intro)}</p><table class="medge-table" id="medge-findings-table"><thead>'
            f'<tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>{kv}</div>')
