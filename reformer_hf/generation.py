"""What generate() needs from a causal Reformer: its own fixed-capacity cache, the inputs of one
step, and a refusal of assisted decoding.  `ReformerGenerationMixin` sits beside
`ReformerPreTrainedModel` in `ReformerForCausalLM`'s bases, in place of transformers' GenerationMixin."""

import copy

import torch
from transformers import GenerationMixin

from . import compat
from .cache import ReformerCache

CACHE_IMPLEMENTATIONS = (None, "dynamic", "static")


def fresh_strides(tensor):
    """A copy of `tensor` with the strides of a new tensor of its shape.  `.contiguous()` would keep a
    (1, 1) slice of the growing sequence as a view whose first stride is the sequence length (a size-1
    dimension's stride does not count for contiguity), and torch.compile guards on strides: a
    decoding step at batch 1 would be compiled again, with dynamic strides, at every step."""
    return tensor.clone(memory_format=torch.contiguous_format)


class ReformerGenerationMixin(GenerationMixin):
    """transformers' GenerationMixin with the hooks a ReformerCache needs; the model class gives
    `config`, `device`, `get_input_embeddings()` and the forward pass."""

    # The cache (ReformerCache) cannot drop its last positions, which assisted generation needs.
    _is_stateful = True

    @classmethod
    def _supports_default_dynamic_cache(cls):
        """generate() must not create a DynamicCache: the model creates its own ReformerCache."""
        return False

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, generation_mode, batch_size,
                                      max_cache_length):
        """generate()'s cache hook (compat.install_generation_cache): an empty ReformerCache sized for every
        position generate() will feed, where the caller passed none and the cache is on.  As for
        transformers' models, `cache_implementation="static"` (or a `compile_config`) asks for a compiled
        decoding step (CUDA graphs on a GPU); None or "dynamic" decode eagerly."""
        implementation = generation_config.cache_implementation
        if implementation not in CACHE_IMPLEMENTATIONS:
            raise ValueError(
                f"{type(self).__name__}.generate: cache_implementation={implementation!r} is not supported; "
                f"expected one of {CACHE_IMPLEMENTATIONS} (None and 'dynamic': eager decoding steps, 'static': "
                "one compiled decoding step)."
            )
        hook_config = generation_config
        if implementation is not None and compat.given_cache(model_kwargs) is None:
            # transformers would warn that it ignores the choice: this model reads it below instead.
            hook_config = copy.copy(generation_config)
            hook_config.cache_implementation = None
        super()._prepare_cache_for_generation(hook_config, model_kwargs, generation_mode, batch_size, max_cache_length)
        if generation_config.use_cache is not False:
            compile_steps = implementation == "static" or generation_config.compile_config is not None
            cache = compat.install_generation_cache(
                model_kwargs, lambda: ReformerCache(self.config, max_cache_length, compileable=compile_steps))
            if isinstance(cache, ReformerCache):
                cache.reserve(max_cache_length)

    def prepare_inputs_for_generation(
        self,
        input_ids,
        past_key_values=None,
        attention_mask=None,
        inputs_embeds=None,
        position_ids=None,
        use_cache=None,
        **kwargs,
    ):
        """The forward arguments of one generation step: the positions the cache has not seen.

        The sequence is the prompt (input_ids, or inputs_embeds of E positions) followed by the
        generated tokens; attention_mask covers all of it.  Unseen positions below E are read from
        inputs_embeds and the generated tokens after them are embedded here, so a pass without a
        cache (use_cache=False), a first step and a generation resumed from a returned cache all
        see the same sequence.  position_ids count the non-padding tokens of each row (left
        padding starts every row at position 0).  After the prefill only the new positions' part of
        attention_mask goes in (the cache holds the rest), and the positions held come from the
        host's count or generate()'s `next_sequence_length`, never from the device: a decoding
        step's inputs have the same shapes at every step and nothing waits for the device.
        """
        cache = compat.merge_cache_arguments("generate", past_key_values, kwargs.pop("cache", None))
        fed_length = compat.pop_next_sequence_length(kwargs)
        for generation_only in ("is_first_iteration", "labels"):
            kwargs.pop(generation_only, None)
        embedded_length = inputs_embeds.shape[1] if inputs_embeds is not None else 0
        total_length = attention_mask.shape[1] if attention_mask is not None else embedded_length + input_ids.shape[1]
        past_length = cache.past_length_for(total_length, fed_length) if isinstance(cache, ReformerCache) else 0
        new_length = total_length - past_length
        if past_length >= embedded_length:
            model_inputs = {"input_ids": fresh_strides(input_ids[:, input_ids.shape[1] - new_length:])}
        else:
            generated_length = total_length - embedded_length
            embeds = inputs_embeds[:, past_length:]
            if generated_length:
                generated = input_ids[:, input_ids.shape[1] - generated_length:]
                embeds = torch.cat([embeds, self.get_input_embeddings()(generated).to(embeds.dtype)], dim=1)
            model_inputs = {"input_ids": None, "inputs_embeds": embeds}
        if position_ids is None:
            if attention_mask is not None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
            else:
                position_ids = torch.arange(total_length, device=self.device)[None]
        model_inputs["position_ids"] = fresh_strides(position_ids[..., -new_length:])
        if past_length and attention_mask is not None:
            # The cache holds the earlier positions' padding: only the new positions' flags go in, so a
            # decoding step's inputs keep their shapes from step to step (one compiled step serves them all).
            attention_mask = fresh_strides(attention_mask[:, -new_length:])
        model_inputs.update(attention_mask=attention_mask, past_key_values=cache, use_cache=use_cache, **kwargs)
        return model_inputs

    def generate(self, *args, **kwargs):
        """transformers' generate(); assisted and prompt-lookup decoding are refused before any work:
        they roll the cache back to drop rejected draft tokens, which a ReformerCache cannot do."""
        generation_config = kwargs.get("generation_config") or self.generation_config
        drafting = {
            "assistant_model": kwargs.get("assistant_model"),
            "prompt_lookup_num_tokens": kwargs.get("prompt_lookup_num_tokens",
                                                   getattr(generation_config, "prompt_lookup_num_tokens", None)),
            "assistant_early_exit": kwargs.get("assistant_early_exit",
                                               getattr(generation_config, "assistant_early_exit", None)),
        }
        asked = {name: value for name, value in drafting.items() if value is not None}
        if asked:
            name, value = next(iter(asked.items()))
            shown = type(value).__name__ if name == "assistant_model" else repr(value)
            raise ValueError(
                f"ReformerForCausalLM.generate: {name}={shown} asks for assisted generation, which is not supported "
                "with stateful models such as this one: a ReformerCache cannot drop rejected draft tokens. "
                "Generate without an assistant."
            )
        return super().generate(*args, **kwargs)
