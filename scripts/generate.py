"""Load a saved causal Reformer with AutoModelForCausalLM and generate with pipeline("text-generation")."""

import argparse
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", type=Path, help="a folder written by save_pretrained (model, tokenizer)")
    parser.add_argument("--prompt", action="append", help="prompt text; repeat for several (default: 'def ')")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--num-beams", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="load the model code saved in the folder instead of the installed package")
    args = parser.parse_args(argv)
    if not (args.model / "config.json").is_file():
        parser.error(f"model={str(args.model)!r} has no config.json: expected a folder written by save_pretrained")
    if args.max_new_tokens < 1:
        parser.error(f"--max-new-tokens={args.max_new_tokens}: expected an integer >= 1")
    if args.num_beams < 1:
        parser.error(f"--num-beams={args.num_beams}: expected an integer >= 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    if not args.trust_remote_code:
        import reformer_hf  # noqa: F401  (registers the Auto* classes)
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    options = dict(max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, num_beams=args.num_beams)
    if args.do_sample:
        options.update(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    for prompt in args.prompt or ["def "]:
        text = generator(prompt, **options)[0]["generated_text"]
        print(f"--- prompt: {prompt!r}\n{text}\n")


if __name__ == "__main__":
    main()
