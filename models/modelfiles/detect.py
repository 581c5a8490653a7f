"""``inspect(path)``: what a path holds, from headers, configs and graphs; no tensor data is read
(except the few scalar ``.alpha`` values of a kohya LoRA, and a pickle's tensors when allowed)."""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from pixelfleet.models.errors import CorruptModelFile, ModelFileNotFound, UnrecognizedModelFile, UnsafeModelFile
from pixelfleet.models.modelcard import BUILTIN_PREFIX, resolve_model_folder
from pixelfleet.models.modelfiles import sd
from pixelfleet.models.modelfiles.info import Component, Memory, ModelFileInfo, OnnxInfo, TensorSpec
from pixelfleet.models.modelfiles.lora import component_of_key, kohya_alpha_keys, lora_info
from pixelfleet.models.modelfiles.safeload import (
    FORMAT_WORDS,
    TORCH_DTYPES,
    check_name_matches,
    claimed_format,
    load_state_dict,
    read_safetensors_header,
    sniff_format,
)

#: ``{key: (safetensors dtype, shape)}``: what inspection needs of a state dict
Table = dict[str, tuple[str, tuple[int, ...]]]
_WEIGHT_FILE = re.compile(r"^(?P<stem>[A-Za-z0-9_]+?)(?:\.(?P<variant>[A-Za-z0-9_]+))?(?:-\d+-of-\d+)?\.(?P<ext>safetensors|bin)$")
_CONFIG_FIELDS = {  # the config.json fields worth reporting, per component
    "unet": ("cross_attention_dim", "in_channels", "out_channels", "sample_size", "addition_embed_type", "block_out_channels"),
    "vae": ("latent_channels", "scaling_factor", "sample_size"),
    "text_encoder": ("hidden_size", "num_hidden_layers", "projection_dim"),
    "text_encoder_2": ("hidden_size", "num_hidden_layers", "projection_dim"),
    "scheduler": ("prediction_type", "beta_schedule", "num_train_timesteps"),
}
_PICKLE_NOTE = "pickle weights not read (pass allow_pickle / --allow-pickle to read them with torch.load(weights_only=True))"
_ONNX_DTYPES = {"FLOAT": "F32", "FLOAT16": "F16", "BFLOAT16": "BF16", "DOUBLE": "F64", "INT8": "I8", "UINT8": "U8",
                "INT16": "I16", "UINT16": "U16", "INT32": "I32", "UINT32": "U32", "INT64": "I64", "UINT64": "U64", "BOOL": "BOOL"}  # fmt: skip


def inspect(path: str | Path, allow_pickle: bool = False) -> ModelFileInfo:
    """What ``path`` holds: a diffusers folder, a single-file SD checkpoint, a LoRA (file or peft
    adapter folder), an ONNX model, a pixelfleet super-resolution folder (``builtin:NAME`` too), or
    another state dict; with capabilities, parameter count and memory.

    Reads headers (safetensors), configs (JSON) and graphs (ONNX, without external data). A
    pickle's contents are read only with ``allow_pickle``, by ``torch.load(weights_only=True)``.

    Raises:
        ModelFileNotFound: nothing at ``path``.
        UnrecognizedModelFile: a folder or file of no format above.
        CorruptModelFile: truncated or malformed, or named as another format than its bytes.
        UnsafeModelFile: a pickle file without ``allow_pickle``.
    """
    text = str(path)
    path = resolve_model_folder(text) if text.startswith(BUILTIN_PREFIX) else Path(path)
    if not path.exists():
        raise ModelFileNotFound(f"{path.name or text}: no such file or folder")  # the name only: no server paths in messages
    if path.is_dir():
        if (path / "model_index.json").is_file():
            return _diffusers_folder(path, allow_pickle)
        if (path / "model.json").is_file():
            return _superres_folder(path)
        if (path / "adapter_config.json").is_file():
            return _peft_folder(path, allow_pickle)
        raise UnrecognizedModelFile(f"{path.name}: a folder without model_index.json (diffusers), model.json (pixelfleet) or adapter_config.json (peft)")
    if (path.parent / "model.json").is_file() and (card := _superres_card(path.parent)) is not None and card.weights == path.name:
        return _superres_folder(path.parent)  # the weights file of a pixelfleet model folder
    actual = sniff_format(path)
    check_name_matches(path, actual)
    actual = claimed_format(path, actual)
    if actual == "safetensors":
        header = read_safetensors_header(path)
        table = {k: (e.dtype, e.shape) for k, e in header.tensors.items()}
        return _state_dict_info(path, table, header.metadata, "safetensors", lambda keys: _read_scalars(path, keys))
    if actual == "onnx":
        return _onnx_file(path)
    if actual in ("pickle", "torch-zip"):
        if not allow_pickle:
            raise UnsafeModelFile(
                f"{path.name} is {FORMAT_WORDS[actual]}, which can run code when loaded: not read. "
                "Pass --allow-pickle (allow_pickle=True) to read it with torch.load(weights_only=True)"
            )
        tensors = load_state_dict(path, allow_pickle=True)
        table = {k: (_st_dtype(v), tuple(v.shape)) for k, v in tensors.items()}
        return _state_dict_info(path, table, {}, "pickle", lambda keys: {k: v for key in keys for k, v in _scalar(key, tensors[key]).items()})
    raise UnrecognizedModelFile(f"{path.name} is {FORMAT_WORDS[actual]}: not a model file pixelfleet reads")


# ---- single files ------------------------------------------------------------------------------


def _st_dtype(tensor) -> str:
    name = str(tensor.dtype).removeprefix("torch.")
    if name not in TORCH_DTYPES:
        raise UnrecognizedModelFile(f"a tensor of dtype {name}, which pixelfleet does not read")
    return TORCH_DTYPES[name]


def _read_scalars(path: Path, keys: list[str]) -> dict[str, float]:
    """Values of one-element tensors (kohya ``.alpha``) of a checked safetensors file."""
    from safetensors import SafetensorError, safe_open

    values = {}
    with safe_open(str(path), framework="pt") as f:
        for key in keys:
            try:
                values.update(_scalar(key, f.get_tensor(key)))
            except (SafetensorError, TypeError, ValueError):  # a dtype torch cannot hold: no alpha then
                continue
    return values


def _scalar(key: str, tensor) -> dict[str, float]:
    """``{key: value}`` of a one-element real tensor, else ``{}``."""
    return {key: float(tensor.float().reshape(-1)[0])} if tensor.numel() == 1 and not tensor.is_complex() else {}


def _count(table: Table, keys=None) -> tuple[int, dict[str, int], Memory]:
    dtypes: dict[str, int] = defaultdict(int)
    pairs = []
    for key in table if keys is None else keys:
        dtype, shape = table[key]
        numel = math.prod(shape)
        dtypes[dtype] += numel
        pairs.append((dtype, numel))
    return sum(dtypes.values()), dict(sorted(dtypes.items())), Memory.of(pairs)


def _short(metadata: dict[str, str]) -> dict[str, str]:
    return {k: (v if len(v) <= 200 else v[:200] + "...") for k, v in metadata.items()}


def _state_dict_info(
    path: Path, table: Table, metadata: dict[str, str], fmt: str, read_scalars: Callable[[list[str]], dict[str, float]], adapter_config: dict | None = None
) -> ModelFileInfo:
    shapes = {k: shape for k, (_, shape) in table.items()}
    files: list[str] = []  # one file: the path itself
    alpha_keys = kohya_alpha_keys(shapes)
    lora = lora_info(shapes, metadata, read_scalars(alpha_keys) if alpha_keys else None, adapter_config)
    if lora is not None:
        by_component: dict[str, list[str]] = defaultdict(list)
        for key in table:
            by_component[component_of_key(key)].append(key)
        components = []
        for name, keys in sorted(by_component.items()):
            params, dtypes, memory = _count(table, keys)
            components.append(Component(name=name, files=files, format=fmt, parameters=params, dtypes=dtypes, memory=memory))
        params, _, memory = _count(table)
        return ModelFileInfo(
            path=str(path), kind="lora", format=fmt, architecture=lora.architecture, base=lora.base,
            cross_attention_dim=lora.cross_attention_dim, text_encoder_dims=lora.text_encoder_dims,
            parameters=params, memory=memory, components=components, lora=lora, metadata=_short(metadata),
        )  # fmt: skip
    facts = sd.detect_single_file(shapes)
    if facts is not None:
        groups: dict[str, list[str]] = defaultdict(list)
        for key in table:
            groups[sd.component_of(key)].append(key)
        components = []
        for name, keys in sorted(groups.items()):
            params, dtypes, memory = _count(table, keys)
            components.append(Component(name=name, files=files, format=fmt, parameters=params, dtypes=dtypes, memory=memory))
        params, _, memory = _count(table, [k for k in table if sd.component_of(k) != "ema"])
        return ModelFileInfo(
            path=str(path), kind="checkpoint", format=fmt,
            architecture=facts.architecture, base=facts.base, cross_attention_dim=facts.cross_attention_dim,
            unet_in_channels=facts.unet_in_channels, text_encoder_dims=facts.text_encoder_dims, capabilities=facts.capabilities,
            parameters=params, memory=memory, components=components, metadata=_short(metadata), notes=facts.notes,
        )  # fmt: skip
    params, dtypes, memory = _count(table)
    notes = [f"{len(table)} tensors: not a Stable Diffusion checkpoint or LoRA by its keys"]
    return ModelFileInfo(
        path=str(path), kind="state_dict", format=fmt, parameters=params, memory=memory,
        components=[Component(name="weights", files=files, format=fmt, parameters=params, dtypes=dtypes, memory=memory)],
        metadata=_short(metadata), notes=notes,
    )  # fmt: skip


# ---- ONNX ----------------------------------------------------------------------------------------


def _onnx_file(path: Path) -> ModelFileInfo:
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, UnicodeDecodeError) as err:
        raise CorruptModelFile(f"{path.name}: not a readable ONNX model ({type(err).__name__}: {str(err)[:100]})") from None
    graph = model.graph
    if not model.ir_version or not graph.node:
        raise CorruptModelFile(f"{path.name}: not a readable ONNX model (no IR version or an empty graph)")
    initializers = {i.name for i in graph.initializer}

    def spec(value) -> TensorSpec:
        t = value.type.tensor_type
        dtype = onnx.TensorProto.DataType.Name(t.elem_type).lower() if value.type.HasField("tensor_type") else "non-tensor"
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim] if t.HasField("shape") else None
        return TensorSpec(name=value.name, dtype=dtype, shape=shape)

    pairs = []
    dtypes: dict[str, int] = defaultdict(int)
    constants = [a.t for n in graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"]
    for init in [*graph.initializer, *constants]:  # weights as initializers, or Constant nodes (e.g. paddle2onnx)
        name = _ONNX_DTYPES.get(onnx.TensorProto.DataType.Name(init.data_type))
        if name is not None:
            numel = math.prod(init.dims)
            pairs.append((name, numel))
            dtypes[name] += numel
    info = OnnxInfo(
        ir_version=model.ir_version,
        opsets={(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        inputs=[spec(v) for v in graph.input if v.name not in initializers],
        outputs=[spec(v) for v in graph.output],
        initializers=len(graph.initializer),
        external_data=any(i.data_location == onnx.TensorProto.EXTERNAL for i in graph.initializer),
    )
    capabilities, notes, scale = [], [], None
    card = path.parent / "model.json"
    if card.is_file():
        sr = _superres_card(path.parent)
        if sr is not None:
            capabilities, scale = ["superres"], sr.scale
            notes.append(f"exported from the super-resolution model {sr.name} (model.json beside it)")
    elif re.search(r"ocr.*_(det|rec|cls)_", path.name, re.IGNORECASE):
        capabilities = ["ocr"]
        notes.append("a PP-OCR detection/recognition/classification model, by its file name")
    memory = Memory.of(pairs)
    return ModelFileInfo(
        path=str(path), kind="onnx", format="onnx", class_name=graph.name or None, capabilities=capabilities, scale=scale,
        parameters=sum(dtypes.values()), memory=memory, onnx=info, notes=notes,
        components=[Component(name="graph", files=[path.name], format="onnx", parameters=sum(dtypes.values()), dtypes=dict(dtypes), memory=memory)],
    )  # fmt: skip


# ---- folders -----------------------------------------------------------------------------------


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise CorruptModelFile(f"{path.parent.name}/{path.name}: not valid JSON ({str(err)[:80]})") from None
    if not isinstance(data, dict):
        raise CorruptModelFile(f"{path.parent.name}/{path.name}: not a JSON object")
    return data


def _superres_card(folder: Path):
    from pydantic import ValidationError

    from pixelfleet.models.modelcard import ModelCard

    try:
        return ModelCard.model_validate_json((folder / "model.json").read_text(encoding="utf-8"))
    except (ValidationError, UnicodeDecodeError):
        return None


def _superres_folder(folder: Path) -> ModelFileInfo:
    card = _superres_card(folder)
    if card is None:
        raise CorruptModelFile(f"{folder.name}/model.json is not a pixelfleet model card")
    weights = folder / card.weights
    if not weights.is_file():
        raise CorruptModelFile(f"{folder.name}: model.json names {card.weights}, which is missing")
    actual = sniff_format(weights)
    check_name_matches(weights, actual)
    if claimed_format(weights, actual) != "safetensors":
        load_state_dict(weights)  # raises: a pickle is UnsafeModelFile, anything else unrecognized
    header = read_safetensors_header(weights)
    table = {k: (e.dtype, e.shape) for k, e in header.tensors.items()}
    params, dtypes, memory = _count(table)
    components = [Component(name="generator", class_name=card.architecture.type, files=[card.weights], format="safetensors",
                            parameters=params, dtypes=dtypes, memory=memory, config=card.architecture.model_dump())]  # fmt: skip
    for onnx_file in sorted(folder.glob("*.onnx")):
        components.append(Component(name=f"onnx:{onnx_file.stem}", files=[onnx_file.name], format="onnx"))
    notes = []
    if card.metrics:
        m = card.metrics
        notes.append(f"PSNR-Y {m.psnr_y:.2f} dB (bicubic {m.bicubic_psnr_y:.2f}) on {m.dataset}")
    return ModelFileInfo(
        path=str(folder), kind="superres", format="folder", class_name=card.architecture.type, capabilities=["superres"],
        scale=card.scale, parameters=params, memory=memory, components=components, metadata=_short(header.metadata), notes=notes,
    )  # fmt: skip


def _peft_folder(folder: Path, allow_pickle: bool) -> ModelFileInfo:
    config = _read_json(folder / "adapter_config.json")
    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        weights = folder / name
        if weights.is_file():
            break
    else:
        raise UnrecognizedModelFile(f"{folder.name}: adapter_config.json without adapter_model.safetensors or .bin")
    actual = sniff_format(weights)
    check_name_matches(weights, actual)
    if actual == "safetensors":
        header = read_safetensors_header(weights)
        table, metadata, fmt = {k: (e.dtype, e.shape) for k, e in header.tensors.items()}, header.metadata, "safetensors"
    else:
        tensors = load_state_dict(weights, allow_pickle=allow_pickle)
        table, metadata, fmt = {k: (_st_dtype(v), tuple(v.shape)) for k, v in tensors.items()}, {}, "pickle"
    info = _state_dict_info(weights, table, metadata, fmt, lambda keys: {}, adapter_config=config)
    if info.kind != "lora":
        raise CorruptModelFile(f"{folder.name}: adapter_config.json beside weights without LoRA keys")
    return info.model_copy(update={"path": str(folder), "format": "folder"})


def _weight_files(folder: Path) -> tuple[list[Path], str, list[str]]:
    """The weight files a component loads (all shards of one variant) and their format, and the
    other variants present: safetensors without variant first, then a safetensors variant, then
    pickles (``.bin``)."""
    groups: dict[tuple[str, str | None], list[Path]] = defaultdict(list)
    for file in sorted(folder.iterdir()):
        m = _WEIGHT_FILE.match(file.name)
        if m and file.is_file():
            groups[(m["ext"], m["variant"])].append(file)
    if not groups:
        return [], "none", []
    order = sorted(groups, key=lambda g: (g[0] != "safetensors", g[1] is not None, g[1] or ""))
    chosen = order[0]
    variants = sorted({v for _, v in groups if v and v != chosen[1]})
    return groups[chosen], "safetensors" if chosen[0] == "safetensors" else "pickle", variants


def _diffusers_folder(folder: Path, allow_pickle: bool) -> ModelFileInfo:
    index = _read_json(folder / "model_index.json")
    pipeline_class = index.get("_class_name") if isinstance(index.get("_class_name"), str) else None
    components: list[Component] = []
    notes: list[str] = []
    configs: dict[str, dict] = {}
    tables: dict[str, Table] = {}
    total_params, total_memory, unread = 0, Memory(stored_bytes=0, fp16_bytes=0, fp32_bytes=0), False
    for name, spec in sorted(index.items()):
        if name.startswith("_") or not (isinstance(spec, list) and len(spec) == 2) or spec[0] is None or spec[1] is None:
            continue
        library, class_name = spec
        sub = folder / name
        if not sub.is_dir():
            notes.append(f"{name} ({class_name}) is listed in model_index.json but its folder is missing")
            continue
        config_file = next((sub / f for f in ("config.json", "scheduler_config.json") if (sub / f).is_file()), None)
        config = _read_json(config_file) if config_file else {}
        configs[name] = config
        files, fmt, variants = _weight_files(sub)
        component = Component(name=name, library=str(library), class_name=str(class_name), files=[f"{name}/{f.name}" for f in files],
                              format=fmt, variants=variants,
                              config={k: config[k] for k in _CONFIG_FIELDS.get(name, ()) if k in config})  # fmt: skip
        if fmt == "safetensors":
            table: Table = {}
            for file in files:
                check_name_matches(file, sniff_format(file))
                table.update({k: (e.dtype, e.shape) for k, e in read_safetensors_header(file).tensors.items()})
            component.parameters, component.dtypes, component.memory = _count(table)
            tables[name] = table
        elif fmt == "pickle" and allow_pickle:
            table = {}
            for file in files:
                table.update({k: (_st_dtype(v), tuple(v.shape)) for k, v in load_state_dict(file, allow_pickle=True).items()})
            component.parameters, component.dtypes, component.memory = _count(table)
            tables[name] = table
        elif fmt == "pickle":
            unread = True
            notes.append(f"{name}: {_PICKLE_NOTE}")
        if component.parameters is not None:
            total_params += component.parameters
            total_memory = total_memory + component.memory
        components.append(component)
    info = ModelFileInfo(
        path=str(folder), kind="diffusers", format="folder", class_name=pipeline_class, components=components,
        parameters=None if unread else total_params, memory=None if unread else total_memory, notes=notes,
    )  # fmt: skip
    if "unet" not in configs:
        info.notes.append("no UNet: not a Stable Diffusion pipeline, capabilities not known")
        return info
    text_dims = {n: configs[n]["hidden_size"] for n in ("text_encoder", "text_encoder_2") if isinstance(configs.get(n, {}).get("hidden_size"), int)}
    has_vae = any(c.name == "vae" and c.files for c in components)
    unet_config = dict(configs["unet"])
    shapes = {k: shape for k, (_, shape) in tables.get("unet", {}).items()}
    if not isinstance(unet_config.get("cross_attention_dim"), int):  # absent, or one per block: the weights tell
        cross = next((shapes[k][1] for k in sorted(shapes) if k.endswith("attn2.to_k.weight") and len(shapes[k]) == 2), None)
        if cross is not None:
            unet_config["cross_attention_dim"] = cross
            info.notes.append("cross-attention width read from the UNet's to_k weights (not a single value in unet/config.json)")
    if unet_config.get("in_channels") is None and len(shapes.get("conv_in.weight", ())) == 4:
        unet_config["in_channels"] = shapes["conv_in.weight"][1]
    facts = sd.detect_diffusers(pipeline_class, unet_config, text_dims, has_vae)
    if facts.cross_attention_dim is None:
        info.notes.append("the cross-attention width is neither in unet/config.json nor in readable UNet weights")
    return info.model_copy(
        update={
            "architecture": facts.architecture, "base": facts.base, "cross_attention_dim": facts.cross_attention_dim,
            "unet_in_channels": facts.unet_in_channels, "text_encoder_dims": facts.text_encoder_dims,
            "capabilities": facts.capabilities, "notes": info.notes + facts.notes,
        }
    )  # fmt: skip
