"""LoRA tags in prompts, AUTOMATIC1111's syntax: ``<lora:NAME:WEIGHT>`` (``<lora:NAME>`` means
weight 1). Tags are removed from the text the model sees; the adapters join the request's
``loras``. Source: stable-diffusion-webui's ``extensions-builtin/Lora`` (``extra_networks_lora``).
"""

from __future__ import annotations

import re

from pixelfleet.deployments.diffusion.params import ADAPTER_ID, LoraRef
from pixelfleet.models.errors import Unprocessable

#: A tag: ``<lora:`` name ``[:weight]`` ``>``; a name holds no ``:`` or ``>``.
LORA_TAG = re.compile(r"<lora:([^:>]*)(?::([^:>]*))?>", re.IGNORECASE)
_ID = re.compile(ADAPTER_ID)


def parse_lora_tags(prompt: str) -> tuple[str, list[LoraRef]]:
    """The prompt without its ``<lora:...>`` tags (whitespace runs left by them collapsed, ends
    stripped) and the adapters they name, in order.

    Raises:
        Unprocessable: a tag with an empty or invalid name, or a weight that is not a number in
            [-4, 4].
    """
    refs: list[LoraRef] = []
    for match in LORA_TAG.finditer(prompt):
        name, weight = match.group(1).strip(), match.group(2)
        if not _ID.match(name):
            raise Unprocessable(f"prompt tag {match.group(0)!r}: the adapter name must match {ADAPTER_ID}")
        try:
            scale = 1.0 if weight is None or not weight.strip() else float(weight)
        except ValueError:
            raise Unprocessable(f"prompt tag {match.group(0)!r}: the weight must be a number") from None
        if not -4.0 <= scale <= 4.0:
            raise Unprocessable(f"prompt tag {match.group(0)!r}: the weight must be in [-4, 4]")
        refs.append(LoraRef(id=name, scale=scale))
    text = LORA_TAG.sub(" ", prompt)
    return re.sub(r"[ \t]{2,}", " ", text).strip().replace(" ,", ","), refs


def adapter_set(prompt: str, loras: list[LoraRef], max_adapters: int) -> tuple[str, tuple[tuple[str, float], ...]]:
    """The prompt the model sees and the request's adapters as a sorted ``((id, scale), ...)``
    tuple (the batching key: equal tuples share pipeline calls).

    Raises:
        Unprocessable: an adapter named twice (in ``loras`` and/or tags), more than
            ``max_adapters``, a prompt that is empty once its tags are removed, a bad tag.
    """
    text, tagged = parse_lora_tags(prompt)
    if not text:
        raise Unprocessable("prompt: nothing is left once the <lora:...> tags are removed")
    chosen: dict[str, float] = {}
    for ref in [*loras, *tagged]:
        if ref.id in chosen:
            raise Unprocessable(f"adapter {ref.id!r} is named twice (loras and/or <lora:...> tags)")
        chosen[ref.id] = ref.scale
    if len(chosen) > max_adapters:
        raise Unprocessable(f"{len(chosen)} adapters asked; this variant takes at most {max_adapters} per request")
    return text, tuple(sorted(chosen.items()))
