"""Diffusion request options (one typed definition: ranges -> 422), the A1111 ``<lora:...>``
parser, and the grouping that keeps adapter sets apart; no Ray, no model."""

from __future__ import annotations

import pytest
from pixelfleet.deployments.diffusion import SPEC
from pixelfleet.deployments.diffusion.params import SCHEDULERS, LoraRef
from pixelfleet.deployments.diffusion.pipeline import Job, group_jobs
from pixelfleet.deployments.diffusion.prompt import adapter_set, parse_lora_tags
from pixelfleet.models.errors import Unprocessable
from pixelfleet.serve.ingress import validate_params

TXT2IMG = SPEC.operation("txt2img")


@pytest.mark.parametrize(
    "field, value",
    [("steps", 0), ("steps", 501), ("width", 12), ("height", 0), ("width", 8200), ("guidance_scale", -1), ("seed", 2**32),
     ("num_images", 0), ("scheduler", "FooScheduler"), ("format", "bmp"), ("prompt", ""), ("prompt", "x" * 4001),
     ("loras", [{"id": "a/b"}]), ("loras", [{"id": "a", "scale": 4.5}]), ("loras", [{"id": f"a{i}"} for i in range(9)]), ("extra", 1)],
)  # fmt: skip
def test_out_of_range_is_422_naming_the_field(field, value):
    with pytest.raises(Unprocessable) as err:
        validate_params(TXT2IMG, {"prompt": "a cat", field: value})
    assert field in err.value.message


def test_defaults_and_operations():
    options = validate_params(TXT2IMG, {"prompt": "a cat", "width": 512, "scheduler": "EulerDiscreteScheduler"})
    assert (options.steps, options.width, options.height, options.num_images, options.format) == (25, 512, None, 1, "png")
    assert validate_params(SPEC.operation("img2img"), {"prompt": "a"}).strength == 0.75
    assert SPEC.operation("inpaint").images == {"image": True, "mask": True}
    assert all(op.body == "json" and op.stream for op in SPEC.operations)
    with pytest.raises(Unprocessable):
        validate_params(SPEC.operation("img2img"), {"prompt": "a", "strength": 0})


def test_scheduler_names_are_diffusers_classes():
    import diffusers
    from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers

    karras = {k.name for k in KarrasDiffusionSchedulers}
    for name in SCHEDULERS:
        assert name in karras and hasattr(diffusers, name)


@pytest.mark.parametrize(
    "prompt, text, refs",
    [("a cat <lora:style:0.8>", "a cat", [("style", 0.8)]),
     ("<lora:a> a <LORA:b:-1.5>, red", "a, red", [("a", 1.0), ("b", -1.5)]),
     ("no tags <notlora:x:1>", "no tags <notlora:x:1>", []),
     ("x <lora:v1.5-detail_2:.5> y", "x y", [("v1.5-detail_2", 0.5)])],
)  # fmt: skip
def test_a1111_tags_parsed_and_stripped(prompt, text, refs):
    got_text, got = parse_lora_tags(prompt)
    assert got_text == text and [(r.id, r.scale) for r in got] == refs


@pytest.mark.parametrize("prompt", ["a <lora::1>", "a <lora:x:big>", "a <lora:x:5>", "a <lora:../x:1>"])
def test_bad_tags_are_422(prompt):
    with pytest.raises(Unprocessable):
        parse_lora_tags(prompt)


def test_adapter_set_merges_sorts_and_refuses_duplicates():
    text, adapters = adapter_set("b <lora:z:0.5>", [LoraRef(id="a", scale=2)], max_adapters=2)
    assert text == "b" and adapters == (("a", 2.0), ("z", 0.5))
    with pytest.raises(Unprocessable, match="twice"):
        adapter_set("b <lora:a>", [LoraRef(id="a")], 4)
    with pytest.raises(Unprocessable, match="at most 1"):
        adapter_set("b <lora:a> <lora:c>", [], 1)
    with pytest.raises(Unprocessable, match="nothing is left"):
        adapter_set("<lora:a>", [], 4)


def _job(adapters=(), steps=4, n=1) -> Job:
    return Job("txt2img", "p", "", steps, 7.5, 16, 16, 0, n, None, adapters)


def test_groups_never_mix_adapter_sets_or_settings():
    a, b = (("x", 1.0),), (("x", 0.5),)
    jobs = [_job(a), _job(b), _job(a), _job(), _job(a, steps=5), _job(b, n=3), _job(a, n=2)]
    groups = group_jobs(jobs, max_images=4)
    assert sorted(i for g in groups for i in g) == list(range(len(jobs)))
    for group in groups:
        assert len({jobs[i].key for i in group}) == 1
        assert sum(jobs[i].num_images for i in group) <= 4 or len(group) == 1
    assert [0, 2, 6] in groups  # same set and settings: one call
