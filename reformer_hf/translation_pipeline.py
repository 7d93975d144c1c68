"""`pipeline("translation")` for encoder-decoder models under transformers 5, which removed its own.

transformers 5 refuses the task names "translation" and "text2text-generation" unless the model's
config lists them under `custom_pipelines`.  ReformerForConditionalGeneration writes
`TRANSLATION_CUSTOM_PIPELINES` into its config, and this file is saved next to the model (the
modeling file imports it), so a saved folder works as

    translator = pipeline("translation", model=folder, trust_remote_code=True)
    translator("The file could not be saved.", num_beams=4, max_new_tokens=64)
    # [{"translation_text": "..."}]

or, with this package imported, `pipeline("translation", model=folder,
pipeline_class=TranslationPipeline)`.  Generation parameters go to `generate()`.  This file
imports nothing relative: it is loaded on its own by transformers' dynamic-module loader.
"""

from transformers import Pipeline

TRANSLATION_CUSTOM_PIPELINES = {
    task: {"impl": "translation_pipeline.TranslationPipeline", "pt": ["AutoModelForSeq2SeqLM"], "type": "text"}
    for task in ("translation", "text2text-generation")
}


class TranslationPipeline(Pipeline):
    """Text in, generated text out: [{"translation_text": ...}] per input (one per returned sequence)."""

    _pipeline_calls_generate = True
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = True
    # No defaults of the pipeline's own: the saved generation_config.json says how the model decodes
    # (the training script stores the beam search its BLEU was measured with).
    _default_generation_config = None

    def _sanitize_parameters(self, prefix=None, truncation=None, skip_special_tokens=None, **generate_kwargs):
        preprocess = {}
        if prefix is not None:
            preprocess["prefix"] = prefix
        if truncation is not None:
            preprocess["truncation"] = truncation
        postprocess = {} if skip_special_tokens is None else {"skip_special_tokens": skip_special_tokens}
        return preprocess, generate_kwargs, postprocess

    def __call__(self, inputs, **kwargs):
        """inputs: a string or a list of strings.  A list gives one result per string: the single
        dict when one sequence is returned per input, else the list of them."""
        results = super().__call__(inputs, **kwargs)
        if isinstance(inputs, (list, tuple)) and all(len(result) == 1 for result in results):
            return [result[0] for result in results]
        return results

    def preprocess(self, text, prefix="", truncation=False):
        if not isinstance(text, str):
            raise ValueError(f"TranslationPipeline: inputs must be strings, got {type(text).__name__}.")
        return self.tokenizer(prefix + text, return_tensors="pt", truncation=truncation)

    def _forward(self, model_inputs, **generate_kwargs):
        # Generation arguments given when the pipeline was built: transformers >= 5.2x keeps them in
        # `_generate_kwargs`, earlier 5.x releases merge them into `generation_config`.
        if getattr(self, "_generate_kwargs", None):
            generate_kwargs = {**self._generate_kwargs, **generate_kwargs}
        elif getattr(self, "generation_config", None) is not None and "generation_config" not in generate_kwargs:
            generate_kwargs["generation_config"] = self.generation_config
        output = self.model.generate(input_ids=model_inputs["input_ids"],
                                     attention_mask=model_inputs.get("attention_mask"), **generate_kwargs)
        sequences = output.sequences if hasattr(output, "sequences") else output
        return {"output_ids": sequences}

    def postprocess(self, model_outputs, skip_special_tokens=True):
        return [
            {"translation_text": self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)}
            for ids in model_outputs["output_ids"]
        ]
