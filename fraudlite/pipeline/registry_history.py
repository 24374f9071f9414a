"""Pure readings of the registry's decision history (``history.jsonl`` entries, oldest first).

No I/O here: ``Registry`` reads the history and the pointer and asks these functions what they mean,
so status, champion age and rollback targets are testable on plain lists of dicts.
"""

from __future__ import annotations

from datetime import datetime

__all__ = ["headline", "version_status", "became_champion_at", "previous_champion"]

_HEADLINE_KEYS = ("average_precision", "roc_auc", "card_precision_at_100", "n", "n_fraud", "start", "end")


def headline(metrics: dict | None) -> dict | None:
    """The metrics worth showing and recording (AP, ROC AUC, precision@100, counts, window)."""
    if not isinstance(metrics, dict):
        return None
    return {k: metrics[k] for k in _HEADLINE_KEYS if k in metrics}


def version_status(version: str, history: list[dict], champion: str | None) -> str:
    """``champion``, ``rejected``, ``retired`` (was champion), or ``registered``."""
    if version == champion:
        return "champion"
    status = "registered"
    for entry in history:
        if entry.get("new_champion") == version:
            status = "retired"
        elif (
            entry.get("challenger") == version and entry.get("decision") == "rejected" and status != "retired"
        ):
            status = "rejected"
    return status


def became_champion_at(history: list[dict], champion: str) -> float | None:
    """Epoch seconds of the latest champion change if it made ``champion`` champion, else None."""
    for entry in reversed(history):
        if entry.get("decision") not in ("promoted", "rollback"):
            continue
        if entry.get("new_champion") == champion:
            try:
                return datetime.fromisoformat(entry["time"]).timestamp()
            except (KeyError, TypeError, ValueError):
                pass
        break
    return None


def previous_champion(history: list[dict], current: str) -> str | None:
    """The champion before ``current``, replaying promotions (push) and rollbacks (pop); None if none."""
    stack: list[str] = []
    for entry in history:
        if entry.get("decision") == "promoted" and entry.get("new_champion"):
            if not stack or stack[-1] != entry["new_champion"]:
                stack.append(entry["new_champion"])
        elif entry.get("decision") == "rollback" and stack:
            stack.pop()
    if not stack or stack[-1] != current:
        stack.append(current)
    while len(stack) > 1 and stack[-2] == current:
        stack.pop(-2)
    return stack[-2] if len(stack) >= 2 else None
