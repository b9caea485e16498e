"""The header every method's ``state_dict`` carries, and its check on ``load_state_dict``.

A checkpoint loaded into the wrong method, shape or class count fails loudly instead of half-loading.
"""

from __future__ import annotations

from typing import Any

from harness.api import GenerativeMethod

STATE_FORMAT = 1


def state_header(method: GenerativeMethod) -> dict[str, Any]:
    return {
        "format": STATE_FORMAT,
        "method": method.name,
        "config": method.config.model_dump(),
        "image_shape": method.image_shape,
        "num_classes": method.num_classes,
        "step": method.step,
    }


def check_state_header(method: GenerativeMethod, state: dict[str, Any]) -> None:
    if state.get("method") != method.name:
        raise ValueError(f"state of method {state.get('method')!r} cannot be loaded into {method.name!r}")
    if state.get("format") != STATE_FORMAT:
        raise ValueError(f"unknown state format {state.get('format')!r} (expected {STATE_FORMAT})")
    if tuple(state["image_shape"]) != method.image_shape or state["num_classes"] != method.num_classes:
        raise ValueError(
            f"state is for images {tuple(state['image_shape'])} and {state['num_classes']} classes, this method "
            f"has {method.image_shape} and {method.num_classes}"
        )
