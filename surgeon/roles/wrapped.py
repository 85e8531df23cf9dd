"""Text towers inside multimodal wrappers: the text family's roles, moved to where the wrapper holds them.

A Gemma-3 with vision (``gemma3``, Gemma3ForConditionalGeneration) or a
Llava-style model (``llava``: a CLIP tower, a projector and a Llama) keeps a
whole text model inside: its config is ``get_text_config()``, its role table
the text family's (bundled or inferred), its modules one submodule of the
wrapper. Found by structure, not per family: both models are built on the meta
device (no weights), the text tower is the one wrapper submodule of the text
base model's class with the same parameter shapes, and each role's module is
moved under it (``model.layers.N`` -> ``model.language_model.layers.N``; the
head goes wherever the wrapper's output embeddings are). Checkpoints written by
transformers' save keep the legacy names (``language_model.model.layers.N``):
transformers' own save-time conversion gives them, as ``aliases``. The vision
tower and the projector get no roles (their tensors stay reachable by raw name).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from surgeon.errors import UnknownArchitecture
from surgeon.roles.table import Architecture


def wrap_architecture(config: dict, text_architecture: Callable[[dict], Architecture]) -> Architecture:
    """The role table of wrapper ``config``: ``text_architecture(text config)``'s roles under the text tower."""
    import torch
    from transformers import CONFIG_MAPPING

    full = CONFIG_MAPPING[config["model_type"]].from_dict(config)
    text_cfg = full.get_text_config()
    key = next((k for k in type(full).sub_configs if getattr(full, k, None) is text_cfg), None)
    if key is None:
        raise UnknownArchitecture(
            f"a composite config ({', '.join(type(full).sub_configs)}) without a text sub-config: "
            "only a text decoder, plain or wrapped, gets roles"
        )
    text_dict = text_cfg.to_dict()
    text = text_architecture(text_dict)
    wrapper_cls, text_cls = _classes(config, full, text_cfg)
    with torch.device("meta"):
        wrapper = wrapper_cls(full)
        text_model = text_cls(text_cfg)
    move = _mover(wrapper, text_model, text_cfg.model_type)
    top = {role: move(path) for role, path in text.top.items()}
    layer = move(text.layer.replace("{layer}", "0")).rpartition(".")[0] + ".{layer}"
    _check_shapes(wrapper, text_model, text, top, layer)
    return dataclasses.replace(
        text,
        name=config["model_type"],
        doc=f"{wrapper_cls.__name__} around a {text_dict.get('model_type')} text model ({text.source} roles: "
        f"{text.doc.rstrip('.')})",
        model_types=(config["model_type"],),
        architectures=(wrapper_cls.__name__,),
        base_prefix=wrapper.base_model_prefix,
        tie_default=bool(getattr(type(full)(), "tie_word_embeddings", False)),
        top=top,
        layer=layer,
        text_config=key,
        text_defaults=text_dict,
        aliases=_aliases(wrapper, [*top.values(), *(f"{layer.format(layer=0)}.{m}" for m in text.roles.values())]),
    )


def _classes(config: dict, full, text_cfg):
    """(the wrapper's model class: config.json's ``architectures`` if transformers has it, else the
    image-text-to-text mapping's (the causal-LM mapping names a text-only class for Llama-4, Qwen-3.5),
    else the causal-LM mapping's; the text family's causal-LM class)."""
    import transformers
    from transformers.models.auto import modeling_auto as auto

    names = [*(config.get("architectures") or [])]
    names += [m.get(config["model_type"]) for m in (auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
                                                    auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)]
    wrapper = next((getattr(transformers, n) for n in names if n and hasattr(transformers, n)), None)
    text = auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(text_cfg.model_type)
    if wrapper is None or text is None or not hasattr(transformers, text):
        raise UnknownArchitecture(
            f"a composite config with a {text_cfg.model_type} text tower, but transformers has no "
            f"{'wrapper model class' if wrapper is None else 'causal-LM class for the text family'}"
        )
    return wrapper, getattr(transformers, text)


def _mover(wrapper, text_model, text_type: str) -> Callable[[str], str]:
    """Text-model module path -> the same module's path in the wrapper (UnknownArchitecture if it has none)."""
    base = text_model.base_model_prefix
    inner = text_model.get_submodule(base) if base and hasattr(text_model, base) else text_model
    shapes = _shapes(inner)
    towers = [n for n, m in wrapper.named_modules() if type(m) is type(inner) and _shapes(m) == shapes]
    if len(towers) != 1:
        raise UnknownArchitecture(
            f"{'no' if not towers else len(towers)} {type(inner).__name__} tower(s) inside the wrapper "
            f"(text config {text_type}): the text tower cannot be placed"
        )
    names = {id(m): n for n, m in wrapper.named_modules()}
    head = wrapper.get_output_embeddings()
    text_head = text_model.get_output_embeddings()

    def move(path: str) -> str:
        if base and path.startswith(base + "."):
            return f"{towers[0]}.{path[len(base) + 1:]}" if towers[0] else path[len(base) + 1:]
        if text_head is not None and head is not None and text_model.get_submodule(path) is text_head:
            return names[id(head)]
        raise UnknownArchitecture(f"the text model's {path} has no counterpart in the wrapper")

    return move


def _shapes(module) -> dict:
    return {n: tuple(p.shape) for n, p in module.named_parameters()}


def _check_shapes(wrapper, text_model, text: Architecture, top: dict, layer: str) -> None:
    """Every moved role module exists in the wrapper with the text model's parameter shapes."""
    pairs = [(text.top[r], top[r]) for r in top]
    pairs += [(f"{text.layer.format(layer=0)}.{m}", f"{layer.format(layer=0)}.{m}") for m in text.roles.values()]
    modules = dict(wrapper.named_modules())
    for src, dst in pairs:
        got = modules.get(text.module_in_model(dst, modules) or dst)
        want = dict(text_model.named_modules()).get(text.module_in_model(src, dict(text_model.named_modules())) or src)
        if got is None or want is None or _shapes(got) != _shapes(want):
            raise UnknownArchitecture(f"the wrapper's {dst} does not match the text model's {src}")


def _aliases(wrapper, modules: list[str]) -> dict[str, str]:
    """Stored-name prefix -> module prefix, from transformers' save-time conversion of the role modules
    (Gemma-3: ``language_model.model`` -> ``model.language_model``, ``language_model.lm_head`` -> ``lm_head``)."""
    from transformers.core_model_loading import revert_weight_conversion

    params = dict(wrapper.named_parameters(remove_duplicate=False))
    out: dict[str, str] = {}
    for mod in modules:
        p = params.get(mod + ".weight")
        if p is None:
            continue
        try:
            got = list(revert_weight_conversion(wrapper, {mod + ".weight": p}))
        except Exception:  # noqa: BLE001 - a conversion that needs several keys at once gives no alias
            continue
        if len(got) != 1 or got[0] == mod + ".weight":
            continue
        a, b = mod.split("."), got[0][: -len(".weight")].split(".")
        while len(a) > 1 and len(b) > 1 and a[-1] == b[-1]:  # strip the common tail, keep one segment each
            a, b = a[:-1], b[:-1]
        old, new = ".".join(b), ".".join(a)
        if out.get(old, new) != new:
            raise UnknownArchitecture(f"stored names {old}.* map to both {out[old]} and {new}")
        out[old] = new
    return out
